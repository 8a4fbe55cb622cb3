"""Training cost per step of each scheme, relative to plain single-exit fine-tuning, in one run.

Baseline: the same backbone as a MultiExitModel with one exit after the last layer (exits=[6]), CE on
that exit — ordinary fine-tuning, through the same trainer. Every scheme is timed through the real
trainer (``offramp.train.train``: forward, the scheme's loss — COSEE's exit simulation included —
backward, clipping, AdamW, schedule), on the same SST-2 batches (same seed, so the same data order),
max length 64, batch 32. Time per optimiser step comes from the trainer's own ``log["step_seconds"]``;
the first ``--warmup`` steps of every run are dropped. Configurations are interleaved round by round
(baseline, joint, …, baseline, joint, …) so drifting load on a shared machine hits all of them alike;
each round gives a ratio median(step times of the scheme) / median(step times of the baseline), and the
reported ratio is the median of the per-round ratios (a burst of outside load spoils one round, not the
result; the pooled ratio over all kept steps is reported beside it).

Targets (issue #3): ≤ 1.2× for joint / weighted / beem-kd / sweet, ≤ 1.4× for cosee. Run::

    .venv/bin/python benchmarks/bench_train_cost.py            # writes results/train_cost.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from offramp.data import load_glue, subsample
from offramp.model import MultiExitModel
from offramp.schemes import build_scheme, get_scheme_config
from offramp.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent

#: name -> (exits, scheme name, scheme options, learned exit, target ratio or None)
CONFIGS: dict[str, tuple[list[int] | None, str, dict[str, Any], bool, float | None]] = {
    "baseline (exits=[6], CE)": ([6], "joint", {}, False, None),
    "joint": (None, "joint", {}, False, 1.2),
    "weighted": (None, "weighted", {}, False, 1.2),
    "beem-kd": (None, "beem-kd", {}, False, 1.2),
    "sweet": (None, "sweet", {}, False, 1.2),
    "cosee": (None, "cosee", {}, False, 1.4),
    "joint+learned-exit": (None, "joint", {}, True, None),
}


def time_steps(name: str, data: Any, args: argparse.Namespace) -> list[float]:
    exits, scheme, options, learned, _ = CONFIGS[name]
    torch.manual_seed(args.seed)
    model = MultiExitModel.from_backbone("minilm-l6", num_labels=2, exits=exits, learned_exit=learned)
    cfg = TrainConfig(
        epochs=1.0,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        progress=False,
        stop_after=args.steps,
    )
    built = build_scheme(get_scheme_config(scheme, **options), model, learned or None)
    log = train(model, data, None, cfg, scheme=built)
    return log["step_seconds"][args.warmup :]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="optimiser steps per run (default: 12)")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run (2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all configurations (5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--glue-dir", default=str(ROOT.parent.parent / "shared" / "data" / "glue"))
    p.add_argument("--out", default=str(ROOT / "results"))
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    baseline = next(iter(CONFIGS))
    names = [baseline] + [n for n in args.configs if n != baseline]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    data = subsample(load_glue("sst2", args.glue_dir, "train"), args.steps * args.batch_size, seed=args.seed)
    times: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(args.rounds):
        for name in names:
            kept = time_steps(name, data, args)
            times[name] += kept
            per_round[name].append(statistics.median(kept))
            print(f"round {r + 1} {name}: {statistics.median(kept) * 1000:.0f} ms/step", file=sys.stderr)
    base = statistics.median(times[baseline])
    rows = []
    for name in names:
        med = statistics.median(times[name])
        round_ratios = [a / b for a, b in zip(per_round[name], per_round[baseline], strict=True)]
        target = CONFIGS[name][4]
        ratio = statistics.median(round_ratios)
        rows.append(
            {
                "config": name,
                "median_ms_per_step": med * 1000,
                "ratio": ratio,
                "pooled_ratio": med / base,
                "ratio_per_round": round_ratios,
                "target": target,
                "meets_target": None if target is None else ratio <= target,
                "steps_timed": len(times[name]),
            }
        )
    result = {
        "setting": {
            "backbone": "minilm-l6 (6 layers, mean-pooling heads)",
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "threads": args.threads,
            "steps_per_run": args.steps,
            "warmup_dropped": args.warmup,
            "rounds": args.rounds,
            "seconds": time.perf_counter() - start,
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "train_cost.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    s = result["setting"]
    lines = [
        "# Training cost per step vs plain single-exit fine-tuning",
        "",
        f"{s['backbone']}, SST-2 batches of {s['batch_size']}, max length {s['max_length']}, "
        f"{s['threads']} CPU thread(s); {s['rounds']} interleaved rounds of {s['steps_per_run']} steps per "
        f"configuration, first {s['warmup_dropped']} of each dropped. Generated by "
        "`benchmarks/bench_train_cost.py`.",
        "",
        "| configuration | ms / step (median) | ratio (median of rounds) | pooled ratio | per-round ratios "
        "| target | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rounds = ", ".join(f"{x:.2f}" for x in r["ratio_per_round"])
        target = "" if r["target"] is None else f"≤ {r['target']:.1f}×"
        ok = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "**no**")
        ms = f"{r['median_ms_per_step']:.0f}"
        pooled = f"{r['pooled_ratio']:.2f}×"
        lines.append(f"| {r['config']} | {ms} | {r['ratio']:.2f}× | {pooled} | {rounds} | {target} | {ok} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
