"""``offramp evaluate``: score every exit and every exit policy of a model on a split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .args import (
    EPILOG,
    add_data_args,
    add_quantize_arg,
    check_quantize_arg,
    default_task,
    fmt,
    load_from_args,
    maybe_quantize,
    print_table,
    say,
)
from .images import add_image_args, image_data

if TYPE_CHECKING:
    from ..report import EvaluationReport

HELP = "score every exit and every exit policy of a trained model on a split"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help=HELP,
        description="Run the model once over a split (the exit outputs are cached in the model folder), "
        "score every exit, sweep every exit policy, print the tables and write them as JSON (fields: see "
        "the README). Without a data source, the task the model was trained on is used.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("model_dir", help="a folder written by `offramp train`")
    add_data_args(p, split_default="dev")
    add_image_args(p)
    p.add_argument("--batch-size", type=int, default=128, help="evaluation batch size (default: 128)")
    p.add_argument("--json", help="where to write the scores (default: MODEL_DIR/eval_<data>_<split>.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--policies",
        help="comma-separated policies to sweep, wildcards ok, e.g. 'maxprob,pcee*' (default: all that "
        "apply)",
    )
    p.add_argument("--grid-size", type=int, default=100, help="settings per policy sweep (default: 100)")
    p.add_argument("--report", metavar="DIR", help="also write a Markdown report with plots into DIR")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the exit outputs instead of reusing MODEL_DIR/exit_outputs_<data>_<split>.npz",
    )
    add_quantize_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Implementation of ``offramp evaluate``."""
    from ..cascade import load_any
    from ..checks import check_data_matches
    from ..evaluate import cache_path, data_name
    from ..io import write_json_atomic
    from ..render import write_report
    from ..report import evaluate_model

    if args.grid_size < 2:
        raise ValueError(f"--grid-size {args.grid_size}: expected at least 2 settings")
    check_quantize_arg(args)
    model = maybe_quantize(load_any(args.model_dir), args)
    default_task(args, model)
    data = image_data(args, model, args.split) or load_from_args(args, args.split)
    check_data_matches(model, data)
    name = data_name(data, model.config.task)
    variant = f"_{args.quantize}" if args.quantize else ""  # quantized outputs never share fp32's files
    patterns = [x.strip() for x in args.policies.split(",") if x.strip()] if args.policies else None
    report = evaluate_model(
        model,
        args.model_dir,
        data,
        args.split,
        cache=cache_path(args.model_dir, name, args.split, args.quantize),
        use_cache=not args.no_cache,
        policies=patterns,
        grid_size=args.grid_size,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        notify=say,
    )
    print_tables(report)
    out = Path(args.json) if args.json else Path(args.model_dir) / f"eval_{name}_{args.split}{variant}.json"
    write_json_atomic(out, report.to_json())
    if args.report:
        write_report(report.result, args.report, f"{Path(args.model_dir).name}: {name} {args.split}{variant}")
        say(f"report written to {Path(args.report) / 'report.md'}")
    say(f"{report.examples} examples in {report.seconds:.1f} s; scores written to {out}")
    return 0


def print_tables(report: EvaluationReport) -> None:
    """Per-exit metrics, then each policy's score at the targets and its AUC (stdout)."""
    result = report.result
    rows = result.per_exit
    print_table(["exit", "layer", *rows[0].metrics], [[r.exit, r.layer, *r.metrics.values()] for r in rows])
    if result.classes is not None:
        print(f"\nfinal exit: macro-F1 {fmt(result.classes.macro_f1)}")
        print_table(
            ["class", "precision", "recall", "f1", "support"],
            [[c.label, c.precision, c.recall, c.f1, c.support] for c in result.classes.per_class],
        )
    if result.policies:
        lo, hi = result.auc_range
        keys = result.target_keys
        print()
        print_table(
            ["policy", *[f"@{k}x" for k in keys], f"AUC {lo:g}-{hi:g}x"],
            [[n, *[p.at_speedup[k] for k in keys], p.auc] for n, p in result.policies.items()],
        )
    if result.calibrated is not None:
        from ..render import calibrated_sentence

        print(f"\ncalibrated {result.calibrated.policy.get('name')}: ", end="")
        print(calibrated_sentence(result.calibrated, result.metric, result.final_score).replace("**", ""))
