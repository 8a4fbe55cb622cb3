"""Argument groups shared by several commands: where data comes from, which exit policy, tables.

Light at import time (argparse only); anything heavy is imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EPILOG = """examples:
  offramp train --task sst2 --data-dir ../shared/data/glue --backbone minilm-l6 \\
      --train-size 2000 --epochs 1 --out runs/sst2
  offramp evaluate runs/sst2 --task sst2 --data-dir ../shared/data/glue

Set OFFRAMP_DEBUG=1 to see full tracebacks instead of one-line errors."""


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
def add_data_args(parser: argparse.ArgumentParser, split_default: str | None = None) -> None:
    """Where examples come from: a GLUE task folder, a CSV/TSV/JSONL file, or a `datasets` name."""
    g = parser.add_argument_group("data (a GLUE task, a file, or a Hugging Face dataset)")
    g.add_argument("--task", help="GLUE task: cola sst2 mrpc stsb qqp mnli mnli-mm qnli rte wnli")
    g.add_argument(
        "--data-dir",
        help="GLUE root holding <TASK>/{train,dev}.tsv (default: $OFFRAMP_GLUE_DIR or ../shared/data/glue)",
    )
    g.add_argument(
        "--data-file", help="a .csv/.tsv/.jsonl file (or a saved `datasets` folder) instead of GLUE"
    )
    g.add_argument("--hf-dataset", help="a Hugging Face `datasets` name (needs network or a local cache)")
    g.add_argument("--hf-config", help="the `datasets` configuration name, e.g. 'sst2' for 'glue'")
    g.add_argument(
        "--text-columns", help="comma-separated text column(s) for --data-file/--hf-dataset, e.g. 'a,b'"
    )
    g.add_argument("--label-column", help="label column for --data-file/--hf-dataset (default: label)")
    g.add_argument("--regression", action="store_true", help="labels are real numbers (like STS-B)")
    if split_default is not None:
        g.add_argument("--split", default=split_default, help=f"split to use (default: {split_default})")


def has_data_source(args: argparse.Namespace) -> bool:
    """Whether the command line names a data source (a task, a file or a `datasets` name)."""
    return any(getattr(args, k, None) is not None for k in ("task", "data_file", "hf_dataset"))


def default_task(args: argparse.Namespace, model: Any) -> None:
    """Without a data source on the command line, use the task the model was trained on."""
    if not has_data_source(args):
        args.task = getattr(model.config, "task", None)


def load_from_args(args: argparse.Namespace, split: str) -> Any:
    """The :class:`~offramp.data.TextDataset` the data flags name, for ``split``."""
    from ..data import load_data

    columns = args.text_columns.split(",") if args.text_columns else None
    return load_data(
        task=args.task,
        split=split,
        data_dir=args.data_dir,
        path=args.data_file,
        hf_name=args.hf_dataset,
        hf_config=args.hf_config,
        text_columns=columns,
        label_column=args.label_column,
        regression=True if args.regression else None,
    )


# ---------------------------------------------------------------------------------------------------------
# exit policy
# ---------------------------------------------------------------------------------------------------------
def policy_help() -> str:
    """The epilog listing every registered policy (imports the policy registry, so torch)."""
    from ..policies import describe_policies

    return (
        "exit policies (--policy NAME; [axis] is what --threshold sets):\n"
        + describe_policies()
        + "\n\nWithout --policy the model's calibrated policy (`offramp calibrate`) is used, else the final "
        "exit."
    )


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("exit policy")
    g.add_argument(
        "--policy", metavar="NAME", help="exit policy by name (list below); default: the model's own"
    )
    g.add_argument(
        "--threshold",
        metavar="X",
        help="value on the policy's threshold axis (tau, t, alpha or k); comma-separated for one per exit",
    )
    g.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another policy parameter, e.g. t=3, signal=entropy, ensemble=true, weights=[0.7,0.8,0.9]",
    )


def parse_threshold(text: str | None) -> float | list[float] | None:
    """``"0.9"`` -> 0.9; ``"0.5,0.6,0.7"`` -> one value per exit."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--threshold {text!r}: expected a number, or comma-separated numbers (one per exit)"
        ) from None
    if not values:
        raise ValueError(f"--threshold {text!r}: expected a number")
    return values[0] if len(values) == 1 else values


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["t=3", "signal=entropy", "ensemble=true"]`` -> typed values (JSON where it parses, else text)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE, e.g. t=3 or signal=entropy")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params[key.strip()] = value
    return params


def policy_from_args(args: argparse.Namespace, model: Any = None) -> Any:
    """The policy the flags ask for; None for the model's own.

    ``--threshold`` without ``--policy`` re-thresholds the model's saved policy (needs ``model``).
    """
    from ..policies import get_policy

    extra = parse_params(args.param)
    value = parse_threshold(args.threshold)
    if args.policy is None:
        if extra:
            raise ValueError("--param needs --policy NAME (the parameters belong to a policy)")
        if value is None or model is None:
            return None
        from ..engine import resolve_policy

        return resolve_policy(model, None, value)
    policy = get_policy(args.policy, **extra)
    return policy.with_threshold(value) if value is not None else policy


# ---------------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """A table cell: floats to 4 places, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: Any = None) -> None:
    """A plain aligned text table."""
    out = out or sys.stdout
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)), file=out)
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=out)


def say(message: str) -> None:
    """A progress or result line for the person at the terminal (stderr, so stdout stays data)."""
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# quantization
# ---------------------------------------------------------------------------------------------------------
QUANTIZE_CHOICES = ("int8",)  # offramp.quantize.QUANTIZE_MODES, kept here so --help needs no torch


def add_quantize_arg(parser: argparse.ArgumentParser, extra: str = "") -> None:
    """``--quantize MODE``: run a quantized copy of the model (torch dynamic int8 of layers and heads)."""
    parser.add_argument(
        "--quantize",
        metavar="MODE",
        help=f"run the model quantized: {', '.join(QUANTIZE_CHOICES)} (torch dynamic quantization of the "
        "encoder layers' and exit heads' linear layers, CPU); the policy `offramp calibrate --quantize` "
        f"saved for that runtime is used when there is one; default: none{'; ' + extra if extra else ''}",
    )


def maybe_quantize(model: Any, args: argparse.Namespace) -> Any:
    """``model`` quantized as ``--quantize`` asks (a copy), or ``model`` itself without the flag."""
    mode = getattr(args, "quantize", None)
    if mode is None:
        return model
    from ..quantize import quantize_model

    return quantize_model(model, mode)


def check_quantize_arg(args: argparse.Namespace) -> None:
    """A ValueError (one-line error, exit 2) for an unknown ``--quantize`` mode, before any model loads."""
    mode = getattr(args, "quantize", None)
    if mode is not None and mode not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize {mode!r}: unknown mode; expected one of {', '.join(QUANTIZE_CHOICES)}")


def prepare_out(args: argparse.Namespace) -> None:
    """Refuse to replace a folder the user has (unless --overwrite); clean up after killed runs."""
    from ..io import human_size, stale_temporaries, tree_size

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} exists and is not a folder")
    for stale in stale_temporaries(out):
        size = human_size(tree_size(stale))
        shutil.rmtree(stale, ignore_errors=True)
        say(f"removed {stale}, a temporary folder left by a killed run ({size})")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
        shown = ", ".join(held[:6]) + (f", ... ({len(held)} entries)" if len(held) > 6 else "")
        raise ValueError(
            f"--out {args.out!r} already holds {shown}; pass --overwrite to replace all of it, or choose "
            "another folder"
        )


def write_jsonl(output: str | None, records: list[dict[str, Any]]) -> None:
    """One JSON line per record, to the file ``output`` (``-o``) or to standard output."""
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        for record in records:
            out.write(json.dumps(record) + "\n")
    finally:
        if output:
            out.close()
