"""Offline simulation speed: every registered policy x 100 thresholds on 10,000 samples (K=6, C=2).

Target (issue #4): all policies together in under 2 s on 2 CPU cores. Synthetic logits (deeper exits
more confident) and learned-exit logits; BEEM-A gets per-exit weights. Each policy's grid is its own
``policy.grid`` thinned to 100 values (budget and patience have fewer meaningful values, so they use
100 values cycling through theirs). After one warm-up pass, each policy is timed 3 times and its
median kept; prints one line per policy and the total of the medians; exits 1 over target.

    .venv/bin/python benchmarks/bench_simulate.py
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from offramp.policies import get_policy, list_policies
from offramp.simulate import simulate

K, N, C, T = 6, 10_000, 2, 100
REPEATS = 3
TARGET_S = 2.0


def main() -> int:
    rng = np.random.default_rng(0)
    margin = rng.normal(size=(1, N, 1))
    logits = (margin * np.linspace(0.5, 3.0, K)[:, None, None] * np.array([1.0, -1.0])).astype(np.float32)
    logits += rng.normal(scale=0.5, size=(K, N, C)).astype(np.float32)
    confidence = rng.normal(size=(K, N)).astype(np.float32)
    cases = []
    for name in list_policies():
        params = {"weights": [0.6, 0.7, 0.75, 0.8, 0.82, 0.83]} if name == "beem-a" else {}
        policy = get_policy(name, **params)
        grid = policy.grid(torch.as_tensor(logits), torch.as_tensor(confidence), size=T)
        cases.append((name, policy, grid[torch.arange(T) % len(grid)]))  # exactly T thresholds
    timings: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    means: dict[str, float] = {}
    for run in range(REPEATS + 1):  # run 0 warms up (allocator, kernels) and is not counted
        for name, policy, grid in cases:
            start = time.perf_counter()
            result = simulate(policy, logits, grid, confidence)
            seconds = time.perf_counter() - start
            assert result.exit_slot.shape == (T, N)
            if run:
                timings[name].append(seconds)
            means[name] = float(result.exit_slot.mean())
    rows = [(name, statistics.median(timings[name]), means[name]) for name, _, _ in cases]
    total = sum(s for _, s, _ in rows)
    for name, seconds, mean_exit in rows:
        print(f"{name:<13} {1000 * seconds:7.1f} ms   mean exit slot {mean_exit:.2f}")
    verdict = "OK" if total < TARGET_S else "OVER TARGET"
    print(f"total {total:.3f} s (sum of medians) for {len(rows)} policies x {T} thresholds x {N} samples "
          f"(target < {TARGET_S} s, {torch.get_num_threads()} threads): {verdict}")  # fmt: skip
    return 0 if total < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
