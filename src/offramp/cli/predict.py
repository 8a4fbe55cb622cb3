"""``offramp predict MODEL_DIR [FILE]``: label texts with early exit, one JSON object per input line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .args import (
    add_policy_args,
    add_quantize_arg,
    check_quantize_arg,
    maybe_quantize,
    policy_from_args,
    policy_help,
    write_jsonl,
)
from .images import run_predict

HELP = "label texts with early exit (JSONL out)"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help=HELP,
        description="Label texts with early exit. Input: a file with one text per line (or stdin); for pair "
        "tasks (MRPC, RTE, ...) each line is 'sentence1<TAB>sentence2'. Output: one JSON object per "
        "line: label, label_id, probabilities, exit_layer, layers_run (regression: prediction).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=policy_help() + "\n\nexamples:\n  offramp predict runs/sst2 reviews.txt\n"
        "  echo 'a gripping film' | offramp predict runs/sst2 --policy entropy --threshold 0.3",
    )
    p.add_argument("model_dir", help="a folder written by `offramp train` (or a cascade folder)")
    p.add_argument(
        "input", nargs="?", default="-", help="text file, one input per line ('-' or omitted: stdin)"
    )
    p.add_argument("more_inputs", nargs="*", metavar="IMAGE", help="image model: more image files")
    p.add_argument("--output", "-o", help="write JSONL here instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per batch (default: 32)")
    p.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="keep only the K most probable classes per input (many-class tasks)",
    )
    add_quantize_arg(p)
    add_policy_args(p)
    return p


def _read_lines(path: str) -> list[str]:
    """The lines of ``path`` (``-`` = stdin) as UTF-8; bad bytes are an error naming the line."""
    where = "stdin" if path == "-" else repr(path)
    if path == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    else:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"input file {path!r} not found; expected a text file, one input per line"
            ) from None
    lines = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            lines.append(line.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{where} line {number}: byte {exc.start + 1} is not valid UTF-8; expected UTF-8 text"
            ) from None
    return lines


def read_inputs(path: str, pair: bool | None) -> tuple[list[Any], list[int]]:
    """Non-blank lines of ``path`` (``-`` = stdin) and their 1-based line numbers; pairs split at TAB."""
    numbered = [(i + 1, line) for i, line in enumerate(_read_lines(path)) if line.strip()]
    if not numbered:
        raise ValueError(f"no inputs in {'stdin' if path == '-' else repr(path)}: expected one text per line")
    if pair is None:
        pair = all("\t" in line for _, line in numbered)
    texts: list[Any] = []
    for number, line in numbered:
        if pair:
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(
                    f"line {number} has {len(parts)} tab-separated fields; this pair task expects "
                    "'sentence1<TAB>sentence2'"
                )
            texts.append((parts[0], parts[1]))
        else:
            texts.append(line)
    return texts, [n for n, _ in numbered]


def is_pair_task(model: Any) -> bool | None:
    """Whether the model's task takes sentence pairs (None when the model records no task)."""
    task = getattr(model.config, "task", None)
    if not task:
        return None
    from ..data import get_task_spec

    return len(get_task_spec(task).text_columns) == 2


def top_k(record: dict[str, Any], k: int | None) -> dict[str, Any]:
    """``record`` with its probabilities cut to the ``k`` largest, most probable first."""
    if k is None or "probabilities" not in record:
        return record
    ranked = sorted(record["probabilities"].items(), key=lambda item: -item[1])[:k]
    return {**record, "probabilities": dict(ranked)}


def run(args: argparse.Namespace) -> int:
    """Implementation of ``offramp predict``."""
    from ..cascade import load_any
    from ..engine import EarlyExitEngine

    for flag, value in (("--batch-size", args.batch_size), ("--top-k", args.top_k)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: expected a positive count")
    check_quantize_arg(args)
    model = maybe_quantize(load_any(args.model_dir), args)
    if (images := run_predict(args, model, top_k)) is not None:  # image files (image models)
        return images
    policy = policy_from_args(args, model)
    texts, numbers = read_inputs(args.input, is_pair_task(model))
    result = EarlyExitEngine(model).predict(texts, policy=policy, batch_size=args.batch_size)
    records = [{"line": n, **top_k(r, args.top_k)} for n, r in zip(numbers, result.records(), strict=True)]
    write_jsonl(args.output, records)
    return 0
