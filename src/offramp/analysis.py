"""The analyses the papers report, as pure functions of arrays.

Speed–accuracy curves (interpolation at set speed-ups, area under the curve), mean and 95%
interval over seeds, exit-layer histograms, Difficulty Inversion Score (CascadeBERT; COSEE Fig. 5),
premature / delayed exit rates (COSEE appendix D) and overthinking. Speed-up conventions themselves
live in ``metrics.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from scipy.integrate import trapezoid
from sklearn.metrics import roc_auc_score


def _clean_curve(speedups: Sequence[float], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sort a curve by speed-up; points that share a speed-up are averaged."""
    x = np.asarray(speedups, dtype=float)
    y = np.asarray(scores, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"speed-ups {x.shape} and scores {y.shape}: expected two 1-D arrays of one length")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0:
        return x, y
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return ux, uy


def interpolate_at(
    speedups: Sequence[float], scores: Sequence[float], targets: Sequence[float]
) -> np.ndarray:
    """Score at each target speed-up by linear interpolation along the curve (the papers' tables).

    Targets outside the speed-ups the curve reaches give NaN: nothing is extrapolated.
    """
    x, y = _clean_curve(speedups, scores)
    t = np.asarray(targets, dtype=float)
    if x.size == 0:
        return np.full(t.shape, np.nan)
    out = np.interp(t, x, y)
    out[(t < x[0] - 1e-9) | (t > x[-1] + 1e-9)] = np.nan
    return out


def curve_auc(speedups: Sequence[float], scores: Sequence[float], lo: float = 1.0, hi: float = 3.0) -> float:
    """Mean score over the speed-up range [lo, hi]: the area under the curve divided by its width.

    Normalised so curves compare on the score's own scale; NaN when the curve does not span the range.
    """
    if not hi > lo:
        raise ValueError(f"speed-up range [{lo}, {hi}]: expected lo < hi")
    x, y = _clean_curve(speedups, scores)
    if x.size == 0 or x[0] > lo + 1e-9 or x[-1] < hi - 1e-9:
        return float("nan")
    inside = (x > lo) & (x < hi)
    grid = np.concatenate([[lo], x[inside], [hi]])
    return float(trapezoid(np.interp(grid, x, y), grid) / (hi - lo))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval (0 for a single value)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), 0.0
    half = stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def bootstrap_weights(n: int, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """[samples, n] how often each of n examples is drawn in each bootstrap resample (rows sum to n).

    One set of weights applied to several models' per-example results gives a *paired* bootstrap:
    every model sees the same resampled examples, so the noise they share cancels in differences.
    """
    if n < 1 or samples < 1:
        raise ValueError(f"n={n}, samples={samples}: expected positive counts")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(np.float64)


def resampled_curve(
    layers: np.ndarray, correct: np.ndarray, total_layers: int, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Speed-up and accuracy of every threshold setting under every resample of the examples.

    ``layers`` / ``correct``: [T, N] layers used by and correctness of each example at each of T
    settings; ``weights``: [B, N] from :func:`bootstrap_weights` (a row of ones gives the curve
    itself). Returns speed-ups and accuracies, both [B, T], with speed-up = L·N / Σ l(n).
    """
    lay = np.asarray(layers, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n = w.sum(1, keepdims=True)
    return total_layers * n / (w @ lay.T), (w @ right.T) / n


def exit_histogram(exit_slot: np.ndarray, num_exits: int) -> np.ndarray:
    """How many inputs left at each exit (0-based exit index per input)."""
    return np.bincount(np.asarray(exit_slot, dtype=int).ravel(), minlength=num_exits)[:num_exits]


def difficulty_inversion_score(signal: np.ndarray, correct: np.ndarray, confidence_positive: bool) -> float:
    """How well an exit's signal ranks its correct predictions above its wrong ones (CascadeBERT's DIS).

    Sort inputs by the signal from least to most confident; an inversion is a pair in which the
    less confident input is predicted correctly and the more confident one wrongly. DIS = 1 −
    inversions / (pairs with one right and one wrong prediction), ties counting one half, which
    equals the area under the ROC curve of the confidence for telling right from wrong. 1 is a
    perfect ranking, 0.5 a random one. Choice: pairs where both are right (or both wrong) carry no
    difficulty information and are left out of the normaliser. NaN when all are right or all wrong.
    """
    s = np.asarray(signal, dtype=float)
    c = np.asarray(correct, dtype=bool)
    if c.all() or not c.any():
        return float("nan")
    return float(roc_auc_score(c, s if confidence_positive else -s))


def exit_failure_rates(exit_slot: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Premature and delayed exit rates over the decisions taken at internal exits (COSEE app. D).

    ``exit_slot`` [N]: where each input left (0-based); ``correct`` [K, N]: whether each exit's
    prediction is right. An input reaching internal exit k < K−1 takes one decision there: exit (if
    k is where it left) or continue. Premature rate = exits taken on a wrong prediction ÷ all exit
    decisions; delayed rate = continues taken on a right prediction ÷ all continue decisions. (The
    paper's wording "ratio of exit decisions made when the classifier predicts incorrectly" is read
    this way; the last exit takes no decision.) NaN when no such decision was taken.
    """
    slots = np.asarray(exit_slot, dtype=int)
    right = np.asarray(correct, dtype=bool)
    num_exits = right.shape[0]
    k = np.arange(num_exits - 1)[:, None]
    reached = k <= slots[None, :]
    exited = (k == slots[None, :]) & reached
    continued = reached & ~exited
    internal = right[:-1]
    n_exit, n_cont = exited.sum(), continued.sum()
    return {
        "premature": float((exited & ~internal).sum() / n_exit) if n_exit else float("nan"),
        "delayed": float((continued & internal).sum() / n_cont) if n_cont else float("nan"),
        "exit_decisions": int(n_exit),
        "continue_decisions": int(n_cont),
    }


def overthinking_rate(correct: np.ndarray) -> float:
    """Share of inputs predicted right at some exit but wrong at the last one (Kaya et al.; PABEE)."""
    right = np.asarray(correct, dtype=bool)
    return float((right.any(axis=0) & ~right[-1]).mean())
