"""``offramp bench MODEL_DIR``: measured against layer-count speed-ups, printed and written as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .args import (
    add_data_args,
    add_policy_args,
    add_quantize_arg,
    check_quantize_arg,
    default_task,
    load_from_args,
    policy_from_args,
    say,
)
from .images import add_image_args, image_data

HELP = "measure wall-clock speed-up of early exit against the full model"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help=HELP,
        description="Time early exit (the model's calibrated policy, or --policy) against the full model run "
        "through the same code path and against stock transformers inference (AutoModel + last head), on "
        "the same padded batches in one run; report layer-count and measured speed-ups and their ratio.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  offramp bench runs/sst2 --task sst2 --data-dir ../shared/data/glue "
        "--batch-sizes 1,64\n  offramp bench runs/sst2 --task sst2 --data-dir ../shared/data/glue "
        "--quantize int8 --baselines all   # early exit on int8 against every alternative",
    )
    p.add_argument(
        "model_dir", help="a folder written by `offramp train` (calibrated by `offramp calibrate`)"
    )
    add_data_args(p, split_default="dev")
    add_image_args(p)
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes (default: 1,64)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per method; the median is kept (5)")
    p.add_argument("--warmup-batches", type=int, default=8, help="batches run untimed first per method (8)")
    p.add_argument("--max-samples", type=int, help="use only the first N inputs of the split")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--json", help="where to write the figures (default: MODEL_DIR/bench_<task>_<split>.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--baselines",
        default="",
        help="also time what users would pick instead, with accuracy next to latency, comma-separated: "
        "attention (stock under sdpa and eager), truncated (the model cut at early exit's mean depth), "
        "torch_int8, ort_fp32, ort_int8 (the full model as one ONNX Runtime graph; needs offramp[onnx]), "
        "or 'all'",
    )
    add_quantize_arg(p)
    add_policy_args(p)
    return p


def _check_counts(args: argparse.Namespace) -> None:
    for flag, value in (("--max-samples", args.max_samples), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: expected a positive count")
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: expected at least 1")


def _baselines(text: str) -> tuple[str, ...]:
    """``--baselines`` -> names (``all``: every one); unknown names fail in ``check_baselines``."""
    from ..bench import BASELINES, check_baselines

    names = [v.strip() for v in text.split(",") if v.strip()]
    return BASELINES if names == ["all"] else check_baselines(names)


def run(args: argparse.Namespace) -> int:
    """Implementation of ``offramp bench``."""
    import torch

    from ..bench import MAX_SPREAD, benchmark, format_report, parse_batch_sizes
    from ..cascade import load_any
    from ..checks import check_data_matches
    from ..io import write_json_atomic

    sizes = parse_batch_sizes(args.batch_sizes)
    _check_counts(args)
    _baselines(args.baselines)
    check_quantize_arg(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_any(args.model_dir)
    default_task(args, model)
    data = image_data(args, model, args.split) or load_from_args(args, args.split)
    check_data_matches(model, data, need_labels=False)
    report = benchmark(
        model, data, sizes, policy=policy_from_args(args, model), repeats=args.repeats,
        warmup_batches=args.warmup_batches, max_samples=args.max_samples, task=data.task,
        progress=not args.no_progress, quantize=args.quantize, baselines=_baselines(args.baselines),
    )  # fmt: skip
    report.meta.update({"model_dir": str(args.model_dir), "task": data.task, "split": args.split})
    if getattr(model, "manifest", None) is not None:  # an `offramp export` folder
        report.meta["stock_is"] = (
            "the exported backbone as one ONNX Runtime graph ("
            + ("int8" if model.manifest.int8 else "fp32")
            + "), not torch; bench the original model folder with --baselines all for the torch comparison"
        )
    print(format_report(report))
    unstable = report.unstable()
    if unstable:
        say(
            f"offramp bench: warning: repeats disagree ({'; '.join(unstable)}; over {MAX_SPREAD}): the "
            "machine was busy, so these speed-ups are not reliable; re-run on a quiet machine or with more "
            "--repeats"
        )
    name = f"bench_{data.task or 'data'}_{args.split}.json"
    out = Path(args.json) if args.json else Path(args.model_dir) / name
    write_json_atomic(out, report.to_json())
    say(f"figures written to {out}")
    return 0
