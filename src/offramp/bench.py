"""Wall-clock benchmark: early exit against the full model, measured in one run on the same inputs.

For each batch size the split is tokenised and cut into padded batches once (sorted by length, the
same batches for every method; tokenisation is not timed), then three methods run interleaved, each
``repeats`` times after a warm-up, and the median wall-clock time of a full pass is kept:

* ``early_exit``: :class:`~offramp.engine.EarlyExitEngine` with the policy (default: the model's own);
* ``full``: the same engine and code path with the final-exit policy (every layer, one head);
* ``stock``: stock Hugging Face inference, ``AutoModel`` forward + the last exit head (the honest baseline).

Reported per batch size: the layer-count speed-up of the early-exit run (COSEE eq. 12, plus PCEE eq. 4
and SWEET's cost fraction), the measured speed-ups t_full / t_early_exit and t_stock / t_early_exit,
and their ratios to the layer-count speed-up (1.0 = the wall clock delivers every saved layer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import EarlyExitEngine, PreparedInputs, add_policy_args, policy_from_args, resolve_policy
from .metrics import speedup_summary


def _stock_runner(engine: EarlyExitEngine, prepared: PreparedInputs) -> Callable[[], None]:
    """Stock transformers inference of the deepest model: AutoModel forward + its last exit head."""
    model = engine.members[-1]
    backbone, head = model.backbone, model.heads[-1]
    batches = [{k: v.to(engine.device) for k, v in b.items() if k != "rows"} for b in prepared.batches]

    @torch.inference_mode()
    def run() -> None:
        for batch in batches:
            hidden = backbone(**batch).last_hidden_state
            head(hidden, batch["attention_mask"])

    return run


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark(
    model: Any,
    data: Any,
    batch_sizes: Sequence[int] = (1, 64),
    policy: Any = None,
    threshold: Any = None,
    repeats: int = 5,
    warmup_batches: int = 8,
    max_samples: int | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Time early exit, the same-path full model and stock inference; return one dict of figures.

    ``data``: a TextDataset or a list of texts (labels, when present, give task scores too).
    ``max_samples`` keeps the first N inputs (batch size 1 over a whole split takes a while).
    """
    if repeats < 1:
        raise ValueError(f"repeats {repeats!r}: expected at least 1")
    engine = EarlyExitEngine(model)
    pol = resolve_policy(model, policy, threshold)
    full_pol = resolve_policy(model, "budget", engine.num_exits)
    texts = getattr(data, "texts", data)
    labels = getattr(data, "labels", None)
    if max_samples is not None:
        texts = texts[:max_samples]
        labels = None if labels is None else labels[:max_samples]
    depth = int(engine.exits[-1])
    multi_model = engine.is_cascade
    report: dict[str, Any] = {
        "policy": pol.to_config(),
        "examples": len(texts),
        "exits": engine.exits,
        "depth": depth,
        "stock_layers": int(engine.members[-1].adapter.num_layers),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup_batches": warmup_batches,
        "load_average_before": list(os.getloadavg()),
        "timing": "median wall-clock seconds of one pass over all inputs; tokenisation excluded",
        "batch_sizes": {},
    }
    for batch_size in batch_sizes:
        prepared = engine.prepare(texts, batch_size)
        warm = PreparedInputs(prepared.batches[:warmup_batches], prepared.num_rows, batch_size)
        stock = _stock_runner(engine, prepared)
        runs: dict[str, Callable[[], Any]] = {
            "early_exit": lambda prepared=prepared: engine.run(prepared, pol),
            "full": lambda prepared=prepared: engine.run(prepared, full_pol),
            "stock": stock,
        }
        if warm.batches:
            engine.run(warm, pol)
            engine.run(warm, full_pol)
            _stock_runner(engine, warm)()
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(repeats):  # interleave and rotate so drift hits every method alike
            for name in names[r % 3 :] + names[: r % 3]:
                times[name].append(_timed(runs[name]))
        result = engine.run(prepared, pol)
        full_result = engine.run(prepared, full_pol)
        med = {name: statistics.median(values) for name, values in times.items()}
        summary = speedup_summary(result.exit_index, engine.exits, multi_model)
        layer_speedup = summary["speedup"]
        n = len(texts)
        entry: dict[str, Any] = {
            **summary,
            "layer_count_speedup": layer_speedup,
            "seconds": med,
            "all_seconds": times,
            "ms_per_input": {k: 1000 * v / n for k, v in med.items()},
            "inputs_per_second": {k: n / v for k, v in med.items()},
            "measured_speedup_vs_full": med["full"] / med["early_exit"],
            "measured_speedup_vs_stock": med["stock"] / med["early_exit"],
        }
        entry["ratio_vs_full"] = entry["measured_speedup_vs_full"] / layer_speedup
        entry["ratio_vs_stock"] = entry["measured_speedup_vs_stock"] / layer_speedup
        entry["agreement_with_full"] = float(np.mean(result.predictions == full_result.predictions))
        if labels is not None:
            entry.update(_scores(task or getattr(data, "task", None), result, full_result, labels))
        report["batch_sizes"][str(batch_size)] = entry
    report["load_average_after"] = list(os.getloadavg())
    return report


def _scores(task: str | None, result: Any, full_result: Any, labels: Sequence[Any]) -> dict[str, Any]:
    from .metrics import primary_metric, task_metrics

    regression = result.probabilities is None
    metric = primary_metric(task, regression=regression)
    gold = np.asarray(labels)
    return {
        "metric": metric,
        "score": task_metrics(task, result.predictions, gold, regression=regression)[metric],
        "full_score": task_metrics(task, full_result.predictions, gold, regression=regression)[metric],
    }


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable table of the benchmark figures."""
    policy = report["policy"]
    lines = [
        f"{report['examples']} inputs, policy {policy['name']} {json.dumps(policy['params'])}, "
        f"{report['threads']} threads, median of {report['repeats']} runs",
        f"{'batch':>5} {'layers x':>8} {'vs full':>8} {'vs stock':>8} {'ratio full':>10} {'ratio stock':>11} "
        f"{'ms/input ee':>11} {'full':>7} {'stock':>7}",
    ]
    for bs, e in report["batch_sizes"].items():
        ms = e["ms_per_input"]
        lines.append(
            f"{bs:>5} {e['layer_count_speedup']:>7.2f}x {e['measured_speedup_vs_full']:>7.2f}x "
            f"{e['measured_speedup_vs_stock']:>7.2f}x {e['ratio_vs_full']:>10.2f} "
            f"{e['ratio_vs_stock']:>11.2f} "
            f"{ms['early_exit']:>11.2f} {ms['full']:>7.2f} {ms['stock']:>7.2f}"
        )
    return "\n".join(lines)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--batch-sizes {text!r}: expected comma-separated positive integers like '1,64'"
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated positive integers like '1,64'")
    return sizes


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """``offramp bench MODEL_DIR ...``: measured vs layer-count speed-ups, printed and written as JSON."""
    from .cli import HEAVY_COMMANDS, add_data_args

    p = sub.add_parser(
        "bench",
        help=HEAVY_COMMANDS["bench"][2],
        description="Time early exit (the model's calibrated policy, or --policy) against the full model run "
        "through the same code path and against stock transformers inference (AutoModel + last head), on "
        "the same padded batches in one run; report layer-count and measured speed-ups and their ratio.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  offramp bench runs/sst2 --task sst2 --data-dir ../shared/data/glue "
        "--batch-sizes 1,64",
    )
    p.add_argument(
        "model_dir", help="a folder written by `offramp train` (calibrated by `offramp calibrate`)"
    )
    add_data_args(p, split_default="dev")
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes (default: 1,64)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per method; the median is kept (5)")
    p.add_argument("--warmup-batches", type=int, default=8, help="batches run untimed first per method (8)")
    p.add_argument("--max-samples", type=int, help="use only the first N inputs of the split")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--json", help="where to write the figures (default: MODEL_DIR/bench_<task>_<split>.json)")
    add_policy_args(p)
    p.set_defaults(func=run_bench)
    return p


def run_bench(args: argparse.Namespace) -> int:
    """Implementation of ``offramp bench``."""
    from .cascade import load_any
    from .cli import load_from_args

    sizes = parse_batch_sizes(args.batch_sizes)
    if args.max_samples is not None and args.max_samples < 1:
        raise ValueError(f"--max-samples {args.max_samples}: expected a positive count")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: expected a positive count")
        torch.set_num_threads(args.threads)
    model = load_any(args.model_dir)
    if args.task is None and args.data_file is None and args.hf_dataset is None:
        args.task = getattr(model.config, "task", None)
    data = load_from_args(args, args.split)
    policy = policy_from_args(args.policy, args.threshold, args.param)
    if policy is None and args.threshold is not None:
        from .engine import parse_threshold

        policy = resolve_policy(model, None, parse_threshold(args.threshold))
    report = benchmark(
        model,
        data,
        sizes,
        policy=policy,
        repeats=args.repeats,
        warmup_batches=args.warmup_batches,
        max_samples=args.max_samples,
        task=data.task,
    )
    report.update({"model_dir": str(args.model_dir), "task": data.task, "split": args.split})
    print(format_report(report))
    out = (
        Path(args.json)
        if args.json
        else Path(args.model_dir) / f"bench_{data.task or 'data'}_{args.split}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"figures written to {out}", file=sys.stderr)
    return 0
