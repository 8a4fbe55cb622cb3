"""Every training scheme on SST-2 with MiniLM-L6: per-exit dev accuracy, one table.

Setup (DESIGN.md's measured-facts setting): ``N`` SST-2 training examples drawn with the seed,
max length 64, batch 32, AdamW lr 1e-4 with 10% warm-up and linear decay, 1 epoch, mean-pooling
heads after every layer; scored on the full GLUE dev split (872). No validation split: with one epoch
there is nothing to select, so the whole budget goes to training.

Resumable: each run writes ``benchmarks/results/train_schemes/<run>.json`` when it finishes and is
skipped when that file exists; the summary (``train_schemes.json`` + ``train_schemes.md``) is rebuilt
from whatever runs exist. Run::

    .venv/bin/python benchmarks/train_schemes.py                 # all schemes, 4000 examples
    .venv/bin/python benchmarks/train_schemes.py --runs joint sweet --seeds 42 43
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from offramp.data import load_glue, subsample
from offramp.evaluate import per_exit_scores

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

#: run name -> RunSpec fields (offramp.train)
RUNS: dict[str, dict[str, Any]] = {
    "joint": {"scheme": "joint"},
    "weighted": {"scheme": "weighted"},
    "beem-kd": {"scheme": "beem-kd"},
    "sweet": {"scheme": "sweet"},
    "sweet+weighted": {"scheme": "sweet", "scheme_options": {"base_loss": "weighted"}},
    "cosee": {"scheme": "cosee"},
    # the paper's QNLI setting (App. A): milder weighting, smaller OSC weight
    "cosee(beta0=1,alpha=0.01)": {"scheme": "cosee", "scheme_options": {"beta0": 1.0, "alpha": 0.01}},
    "two-stage": {"scheme": "two-stage"},
    "joint+learned-exit": {"scheme": "joint", "learned_exit": True},
    "multi-model": {"scheme": "multi-model"},
}


def run_one(name: str, seed: int, args: argparse.Namespace, train_data: Any, dev: Any) -> dict[str, Any]:
    from offramp.train import RunSpec, TrainConfig, build_and_train

    spec = RUNS[name]
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        seed=seed,
        progress=not args.no_progress,
    )
    start = time.perf_counter()
    model, log = build_and_train(train_data, None, None, RunSpec(backbone="minilm-l6", **spec), cfg)
    train_seconds = time.perf_counter() - start
    scores = per_exit_scores(model, dev, batch_size=128, max_length=args.max_length)
    return {
        "run": name,
        "seed": seed,
        "spec": spec,
        "train_size": len(train_data),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_length": args.max_length,
        "exits": [s["layer"] for s in scores],
        "dev_accuracy": [s["score"] for s in scores],
        "train_seconds": train_seconds,
        "threads": torch.get_num_threads(),
    }


def summarise(out_dir: Path, train_size: int) -> dict[str, Any]:
    """Collect the finished runs of one training size into one JSON and a Markdown table (mean over seeds)."""
    files = sorted((out_dir / "train_schemes").glob(f"*-n{train_size}-s*.json"))
    rows = [json.loads(p.read_text()) for p in files]
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    order = [n for n in RUNS if n in by_run] + sorted(set(by_run) - set(RUNS))
    table = []
    for name in order:
        runs = by_run[name]
        accs = torch.tensor([r["dev_accuracy"] for r in runs])
        table.append(
            {
                "run": name,
                "seeds": [r["seed"] for r in runs],
                "exits": runs[0]["exits"],
                "dev_accuracy": accs.mean(0).tolist(),
                "dev_accuracy_per_seed": accs.tolist(),
                "train_seconds": sum(r["train_seconds"] for r in runs) / len(runs),
            }
        )
    verdict = None
    if "joint" in by_run and "sweet" in by_run:
        j = next(t for t in table if t["run"] == "joint")
        s = next(t for t in table if t["run"] == "sweet")
        verdict = {
            "joint_exit1": j["dev_accuracy"][0],
            "sweet_exit1": s["dev_accuracy"][0],
            "sweet_beats_joint_at_exit1": s["dev_accuracy"][0] > j["dev_accuracy"][0],
        }
    summary = {
        "setting": {k: rows[0][k] for k in ("train_size", "epochs", "batch_size", "lr", "max_length")}
        if rows
        else {},
        "runs": table,
        "sweet_vs_joint": verdict,
    }
    (out_dir / "train_schemes.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "train_schemes.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    s = summary["setting"]
    lines = [
        "# Training schemes on SST-2 (MiniLM-L6, mean-pooling heads after every layer)",
        "",
        f"{s.get('train_size')} training examples, {s.get('epochs')} epoch, batch {s.get('batch_size')}, "
        f"lr {s.get('lr')}, max length {s.get('max_length')}; accuracy on the GLUE dev split (872). "
        "Generated by `benchmarks/train_schemes.py`.",
        "",
    ]
    if not summary["runs"]:
        return "\n".join(lines) + "\n"
    k = len(summary["runs"][0]["exits"])
    lines.append(
        "| scheme | seeds | " + " | ".join(f"exit {i + 1}" for i in range(k)) + " | mean | train s |"
    )
    lines.append("|---|---|" + "---|" * (k + 2))
    for r in summary["runs"]:
        accs = " | ".join(f"{a:.3f}" for a in r["dev_accuracy"])
        mean = sum(r["dev_accuracy"]) / len(r["dev_accuracy"])
        lines.append(f"| {r['run']} | {len(r['seeds'])} | {accs} | {mean:.3f} | {r['train_seconds']:.0f} |")
    v = summary.get("sweet_vs_joint")
    if v:
        word = "beats" if v["sweet_beats_joint_at_exit1"] else "does not beat"
        lines += ["", f"SWEET's first exit ({v['sweet_exit1']:.3f}) {word} joint's ({v['joint_exit1']:.3f})"]
        for name in ("joint", "sweet"):
            r = next(t for t in summary["runs"] if t["run"] == name)
            per_seed = ", ".join(
                f"seed {seed}: {accs[0]:.3f}"
                for seed, accs in zip(r["seeds"], r["dev_accuracy_per_seed"], strict=True)
            )
            lines.append(f"- {name} exit 1 per seed: {per_seed}")
    lines.append("")
    lines.append(
        "multi-model: exit k is an independent model of depth k (cost of answering at k: 1+…+k layers). "
        "train s: wall clock of one run including model loading, mean over seeds, on a shared 2-core "
        "machine under varying outside load: not a cost measure (see train_cost.md)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--runs", nargs="*", default=list(RUNS), help=f"runs to do (default: all): {', '.join(RUNS)}"
    )
    p.add_argument("--seeds", nargs="*", type=int, default=[42])
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--glue-dir", default=str(ROOT.parent.parent / "shared" / "data" / "glue"))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    unknown = sorted(set(args.runs) - set(RUNS))
    if unknown:
        p.error(f"unknown runs {unknown}; expected some of {', '.join(RUNS)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out_dir = Path(args.out)
    (out_dir / "train_schemes").mkdir(parents=True, exist_ok=True)
    full = load_glue("sst2", args.glue_dir, "train")
    dev = load_glue("sst2", args.glue_dir, "dev")
    for seed in args.seeds:
        train_data = subsample(full, args.train_size, seed=seed)
        for name in args.runs:
            path = out_dir / "train_schemes" / f"{name}-n{args.train_size}-s{seed}.json"
            if path.exists():
                print(f"skip {path.name} (done)", file=sys.stderr)
                continue
            print(f"== {name} seed {seed} ({len(train_data)} examples)", file=sys.stderr)
            result = run_one(name, seed, args, train_data, dev)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, path)
            accs = " ".join(f"{a:.3f}" for a in result["dev_accuracy"])
            print(f"   {name}: dev acc per exit {accs} ({result['train_seconds']:.0f} s)", file=sys.stderr)
            summarise(out_dir, args.train_size)
    summary = summarise(out_dir, args.train_size)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
