"""Early exit on per-block ONNX Runtime int8 against the full model as one ORT int8 graph, at a given
thread count (issue 13: a second intra-op thread made batch 1 slower for both).

Needs ``python benchmarks/speed.py --prepare-only`` first (the calibrated model and its int8 export).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ort_threads.py 1
    .venv/bin/python benchmarks/ort_threads.py 2
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from offramp.bench import benchmark
from offramp.cascade import load_any
from offramp.data import load_glue
from offramp.exported import ExportedModel

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    model = load_any(ROOT / "runs" / "speed")
    dev = load_glue("sst2", ROOT.parent / "shared" / "data" / "glue", "dev")
    exported = ExportedModel.load(ROOT / "runs" / "speed-onnx-int8")
    result = benchmark(model, dev, (1, 64), repeats=5, warmup_batches=8, max_samples=300, task="sst2",
                       baselines=("ort_int8",), variants={"ee_ort_int8": (exported, None)})  # fmt: skip
    for bs, timing in result.batch_sizes.items():
        entry = timing.to_json(result.examples)
        ms = entry["ms_per_input"]
        print(
            f"threads {torch.get_num_threads()} batch {bs}: ORT int8 one graph {ms['ort_int8']:.3f} ms, "
            f"early exit per block {ms['ee_ort_int8']:.3f} ms ({ms['ort_int8'] / ms['ee_ort_int8']:.2f}x), "
            f"its full depth {ms['ee_ort_int8_full']:.3f} ms, measured / layer-count "
            f"{entry['ratio_vs_own_full']['ee_ort_int8']:.2f} "
            f"at {timing.method_layer_speedup['ee_ort_int8']:.2f}x layers"
        )


if __name__ == "__main__":
    main()
