"""Early exit against what users would pick instead, on the same inputs in one run (issue 13).

Variants, all on SST-2 dev (872 sentences), tokenised once, the same padded batches at batch 1 and 64:
stock transformers fp32 (default attention, and the other of sdpa/eager), the model truncated at early
exit's mean depth, torch int8 (dynamic) of the full model, ONNX Runtime fp32 and int8 of the full model
as one graph, offramp full and early exit (fp32 eager), and early exit combined with torch int8, with
per-block ONNX Runtime fp32 and with per-block ONNX Runtime int8 — each early-exit runtime calibrated to
the same layer-count target on ITS OWN outputs over the validation rows held out of training (never dev).

Steps (each skipped when its output exists; ``--fresh`` redoes the calibrations and exports):
1. ``offramp train`` MiniLM-L6, joint, 8,000 SST-2 training sentences, 2 epochs, max length 64;
2. ``offramp calibrate --target-speedup 2`` (maxprob) on fp32, and with ``--quantize int8``;
3. ``offramp export --format onnx`` (fp32 and ``--int8``), each calibrated the same way;
4. one :func:`offramp.bench.benchmark` run with every baseline and the three runtime variants, written to
   ``benchmarks/results/speed.json`` and ``speed.md``.

    .venv/bin/python benchmarks/speed.py                 # everything (~25 min on 2 idle cores)
    .venv/bin/python benchmarks/speed.py --repeats 3 --max-samples 200   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from offramp.cli import main as offramp

ROOT = Path(__file__).resolve().parents[1]
GLUE = str(ROOT.parent / "shared" / "data" / "glue")
RESULTS = ROOT / "benchmarks" / "results"
#: early-exit method -> its label in the tables
EARLY_EXIT = {
    "early_exit": "offramp early exit, fp32 eager",
    "ee_torch_int8": "offramp early exit + torch int8",
    "ee_ort_fp32": "offramp early exit + ONNX Runtime fp32 (per-block graphs)",
    "ee_ort_int8": "offramp early exit + ONNX Runtime int8 (per-block graphs)",
}
FULL = {
    "stock": "stock transformers fp32 ({attention})",
    "stock_eager": "stock transformers fp32 (eager attention)",
    "stock_sdpa": "stock transformers fp32 (sdpa attention)",
    "truncated": "truncated at early exit's mean depth (budget policy)",
    "stock_int8": "torch int8 dynamic, full model",
    "ort_fp32": "ONNX Runtime fp32, full model (one graph)",
    "ort_int8": "ONNX Runtime int8, full model (one graph)",
    "full": "offramp full (same path, every layer)",
}
#: the full-model alternatives early exit must beat, and the targets of issue 13
ALTERNATIVES = ("ort_int8", "stock_int8")
TARGET_SPEEDUP = 1.5
TARGET_ACCURACY_GAP = 0.005
TARGET_RATIO = {1: 0.95, 64: 0.90}


def step(argv: list[str]) -> None:
    print("+ offramp " + " ".join(argv), flush=True)
    code = offramp(argv)
    if code:
        sys.exit(code)


def prepare(model: Path, target: str, fresh: bool) -> dict[str, Path]:
    """Train, calibrate each runtime on its own outputs, export; returns the ONNX folders."""
    data = ["--task", "sst2", "--data-dir", GLUE]
    if not (model / "offramp.json").is_file():
        step(["train", *data, "--backbone", "minilm-l6", "--scheme", "joint", "--train-size", "8000",
              "--epochs", "2", "--max-length", "64", "--out", str(model), "--no-progress"])  # fmt: skip
    config = json.loads((model / "offramp.json").read_text())
    goal = ["--target-speedup", target, "--policy", "maxprob", "--no-progress"]
    if fresh or config.get("policy") is None:
        step(["calibrate", str(model), *data, *goal])
    if fresh or "int8" not in config.get("runtime_policies", {}):
        step(["calibrate", str(model), *data, *goal, "--quantize", "int8"])
    folders = {"ee_ort_fp32": model.with_name(model.name + "-onnx"),
               "ee_ort_int8": model.with_name(model.name + "-onnx-int8")}  # fmt: skip
    for name, folder in folders.items():
        if fresh and folder.exists():
            shutil.rmtree(folder)
        if not folder.exists():
            step(["export", str(model), "--format", "onnx", "--out", str(folder)]
                 + (["--int8"] if name.endswith("int8") else []))  # fmt: skip
            step(["calibrate", str(folder), *data, *goal])
    return folders


def measure(model_dir: Path, folders: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from offramp.bench import BASELINES, benchmark
    from offramp.cascade import load_any
    from offramp.data import load_glue
    from offramp.exported import ExportedModel
    from offramp.quantize import quantize_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_any(model_dir)
    dev = load_glue("sst2", GLUE, "dev")
    variants = {"ee_torch_int8": (quantize_model(model), None)}
    variants.update({name: (ExportedModel.load(folder), None) for name, folder in folders.items()})
    result = benchmark(model, dev, args.batch_sizes, repeats=args.repeats, warmup_batches=8,
                       max_samples=args.max_samples, task="sst2", progress=True, baselines=BASELINES,
                       variants=variants)  # fmt: skip
    report = result.to_json()
    report["policies"] = {name: m.config.policy for name, (m, _) in variants.items()}
    report["policies"]["early_exit"] = model.config.policy
    return report


def verdicts(report: dict[str, Any]) -> list[str]:
    """The issue's targets, checked against this run's figures."""
    lines = []
    for bs, e in report["batch_sizes"].items():
        ms, score = e["ms_per_input"], e["method_scores"]
        best_alt = min(ALTERNATIVES, key=lambda k: ms[k])
        combined = min(("ee_torch_int8", "ee_ort_int8"), key=lambda k: ms[k])
        speedup = ms[best_alt] / ms[combined]
        gap = score[best_alt] - score[combined]
        ratio = e["ratio_vs_own_full"][combined]
        ok = speedup >= TARGET_SPEEDUP and gap <= TARGET_ACCURACY_GAP
        ok_ratio = ratio >= TARGET_RATIO.get(int(bs), 0.9)
        lines.append(
            f"- batch {bs}: fastest combined path `{combined}` is **{speedup:.2f}×** faster than the "
            f"fastest full-model alternative `{best_alt}` (target ≥ {TARGET_SPEEDUP}×), accuracy "
            f"{score[combined]:.3f} vs {score[best_alt]:.3f} (gap {100 * gap:+.1f} points, target ≤ "
            f"{100 * TARGET_ACCURACY_GAP:.1f}): "
            f"**{'holds' if ok else 'does not hold'}**; measured ÷ layer-count on that path "
            f"{ratio:.2f} (target ≥ {TARGET_RATIO.get(int(bs), 0.9)}): "
            f"**{'holds' if ok_ratio else 'does not hold'}**."
        )
    return lines


def table(report: dict[str, Any]) -> list[str]:
    sizes = list(report["batch_sizes"])
    head = "| variant | " + " | ".join(f"batch {bs}: ms/input, × stock" for bs in sizes)
    lines = [head + " | dev accuracy | layer-count × | measured ÷ layer-count |",
             "|---" * (len(sizes) + 4) + "|"]  # fmt: skip
    first = report["batch_sizes"][sizes[0]]
    labels = {**FULL, **EARLY_EXIT}
    labels["stock"] = labels["stock"].format(attention=report.get("attention") or "default attention")
    order = [k for k in (*FULL, *EARLY_EXIT) if k in first["seconds"]]
    for name in order:
        cells = []
        for bs in sizes:
            e = report["batch_sizes"][bs]
            cells.append(f"{e['ms_per_input'][name]:.2f} ms, {e['speedup_vs_stock'][name]:.2f}×")
        layers = first["method_layer_speedup"].get(name)
        ratio = " / ".join(f"{report['batch_sizes'][bs]['ratio_vs_own_full'][name]:.2f}" for bs in sizes
                           if name in report["batch_sizes"][bs]["ratio_vs_own_full"])  # fmt: skip
        lines.append(f"| {labels[name]} | " + " | ".join(cells)
                     + f" | {first['method_scores'][name]:.3f} | {'' if layers is None else f'{layers:.2f}×'}"
                     f" | {ratio} |")  # fmt: skip
    return lines


def write_md(report: dict[str, Any], command: str) -> None:
    lines = [
        "# Early exit composed with int8 and ONNX Runtime, against what users would pick instead",
        "",
        f"Generated by `{command}` on {report['date']} ({report['machine']}). SST-2 dev, "
        f"{report['examples']} sentences, MiniLM-L6 (joint, 8,000 training sentences, 2 epochs), every "
        f"early-exit runtime calibrated to 2× (layer count, maxprob) on its own outputs over the held-out "
        f"validation rows. {report['threads']} threads; median of {report['repeats']} interleaved, "
        f"rotated rounds; all ratios are within this one run. Load average before/after: "
        f"{report['load_average_before'][0]:.1f} / {report['load_average_after'][0]:.1f}.",
        "",
        *table(report),
        "",
        "× stock: stock transformers fp32 time ÷ the variant's time. Measured ÷ layer-count: the early-exit "
        "runtime's speed-up over ITS OWN full-depth path (same runtime, every layer), divided by its "
        "layer-count speed-up (1.0 = every saved layer became saved time).",
        "",
        "## Targets (issue 13)",
        "",
        *verdicts(report),
        "",
        "Thresholds (maxprob τ) per runtime: "
        + ", ".join(f"{k} {v['params'].get('tau', v['params'])}" for k, v in report["policies"].items() if v)
        + ".",
    ]
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--model", default=str(ROOT / "runs" / "speed"), help="model folder")
    parser.add_argument("--target-speedup", default="2.0")
    parser.add_argument("--fresh", action="store_true", help="recalibrate and re-export")
    parser.add_argument("--batch-sizes", type=lambda t: [int(v) for v in t.split(",")], default=[1, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--prepare-only", action="store_true", help="train, calibrate, export; no timing")
    args = parser.parse_args()
    model = Path(args.model)
    folders = prepare(model, args.target_speedup, args.fresh)
    if args.prepare_only:
        return 0
    report = measure(model, folders, args)
    report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    report["command"] = command.strip()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(report, indent=1) + "\n")
    write_md(report, report["command"])
    print((RESULTS / "speed.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
