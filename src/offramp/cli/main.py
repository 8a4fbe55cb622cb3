"""``offramp`` entry point: one subcommand per module of this package, built only when it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .. import __version__
from .args import EPILOG

#: Command name -> (module in this package, one-line help). A command's full parser is built only when
#: that command runs, so `offramp --help` and every other command start fast (no torch import).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "fine-tune a multi-exit model"),
    "evaluate": ("evaluate", "score every exit and every exit policy of a trained model on a split"),
    "compare": ("compare", "aggregate evaluate results over seeds and compare configurations"),
    "calibrate": ("calibrate", "choose an exit threshold on a validation split and save it with the model"),
    "predict": ("predict", "label texts with early exit (JSONL out)"),
    "bench": ("bench", "measure wall-clock speed-up of early exit against the full model"),
    "serve": ("serve", "serve a model over HTTP with dynamic batching and a live speed knob"),
    "gradients": ("gradients", "measure conflicting gradients between exits (SWEET §3.1)"),
    "export": ("export", "export a trained model to ONNX (one graph per block) for ONNX Runtime"),
}


def build_parser(
    command: str | None = None,
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The ``offramp`` parser and ``command``'s own subparser (only its options are built in full)."""
    parser = argparse.ArgumentParser(
        prog="offramp",
        description="Early-exit transformer classifiers: attach exits to a pre-trained encoder, fine-tune "
        "them, let easy inputs leave early, and measure the real speed-up.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"offramp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    own = None
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            cmd = importlib.import_module(f".{module}", __package__)
            own = cmd.add_parser(sub)
            own.set_defaults(func=cmd.run, command=name)
        else:
            sub.add_parser(name, help=help_text)
    return parser, own


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; a command's options and positionals may come in any order."""
    command = _command_of(argv)
    parser, own = build_parser(command)
    if own is not None and argv and argv[0] == command:
        return own.parse_intermixed_args(list(argv[1:]))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        raise SystemExit(2)
    return args


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word not starting with '-'), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("offramp: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:
        if os.environ.get("OFFRAMP_DEBUG"):
            raise
        print(f"offramp {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    """Hide transformers' weight-loading bars and advisory logs; offramp prints its own progress.

    Warnings (e.g. how many inputs were truncated) print as one line each.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.formatwarning = lambda message, category, *_: f"offramp: warning: {message}\n"

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
