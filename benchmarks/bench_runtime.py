"""Live-runtime benchmark: a calibrated MiniLM-L6 on SST-2 dev at batch sizes 1 and 64.

Issue #4's targets: measured speed-up / layer-count speed-up >= 0.9 at batch 1 and >= 0.8 at batch 64,
with a model calibrated to about 2x. The measured speed-up is against the full model run through the
same engine (final-exit policy) and, separately, against stock transformers inference (AutoModel +
last head) on the same padded batches in the same run (see ``offramp.bench``).

Steps (each skipped when its output exists):
1. train MiniLM-L6 with exits after every layer on 2,000 SST-2 training sentences, 1 epoch (``offramp
   train``; 1,000 training rows are held out for validation);
2. calibrate ``--policy`` (default maxprob) to ``--target-speedup`` (default 2.0) on those held-out
   rows (``offramp calibrate``) — never on dev;
3. ``offramp bench`` on the 872 dev sentences; figures go to ``benchmarks/results/bench_runtime.json``.

    .venv/bin/python benchmarks/bench_runtime.py                       # everything
    .venv/bin/python benchmarks/bench_runtime.py --model runs/mymodel  # bench an existing model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from offramp.cli import main as offramp

ROOT = Path(__file__).resolve().parents[1]
GLUE = str(ROOT.parent / "shared" / "data" / "glue")
TARGETS = {"1": 0.9, "64": 0.8}


def run() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--model", default=str(ROOT / "runs" / "bench_runtime"), help="model folder")
    parser.add_argument("--policy", default="maxprob", help="policy to calibrate (default: maxprob)")
    parser.add_argument("--target-speedup", default="2.0", help="layer-count speed-up to calibrate for")
    parser.add_argument("--recalibrate", action="store_true", help="calibrate even if a policy is saved")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--repeats", default="5")
    parser.add_argument("--max-samples", help="bench only the first N dev sentences")
    parser.add_argument("--threads", help="torch intra-op threads (default: torch's choice, 2 here)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_runtime.json"))
    args = parser.parse_args()
    model = Path(args.model)
    if not (model / "offramp.json").is_file():
        code = offramp(["train", "--task", "sst2", "--data-dir", GLUE, "--backbone", "minilm-l6",
                        "--train-size", "2000", "--epochs", "1", "--max-length", "64",
                        "--out", str(model), "--no-progress"])  # fmt: skip
        if code:
            return code
    if args.recalibrate or json.loads((model / "offramp.json").read_text()).get("policy") is None:
        code = offramp(["calibrate", str(model), "--task", "sst2", "--data-dir", GLUE,
                        "--target-speedup", args.target_speedup, "--policy", args.policy])  # fmt: skip
        if code:
            return code
    bench = ["bench", str(model), "--task", "sst2", "--data-dir", GLUE, "--split", "dev",
             "--batch-sizes", args.batch_sizes, "--repeats", args.repeats, "--json", args.out]  # fmt: skip
    if args.max_samples:
        bench += ["--max-samples", args.max_samples]
    if args.threads:
        bench += ["--threads", args.threads]
    code = offramp(bench)
    if code:
        return code
    report = json.loads(Path(args.out).read_text())
    ok = True
    for bs, entry in report["batch_sizes"].items():
        target = TARGETS.get(bs)
        if target is None:
            continue
        met = entry["ratio_vs_full"] >= target
        ok &= met
        print(f"batch {bs}: measured/layer-count = {entry['ratio_vs_full']:.2f} (target >= {target}): "
              f"{'OK' if met else 'MISSED'}; vs stock {entry['ratio_vs_stock']:.2f}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run())
