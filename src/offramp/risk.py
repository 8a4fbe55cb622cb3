"""Thresholds with a guarantee: Learn-then-Test (Angelopoulos et al., 2021) over a policy's threshold grid.

**The risk controlled.** For a threshold λ, the per-input loss is

    ℓ_i(λ) = 1[the policy at λ predicts input i wrongly AND the final exit predicts it rightly]

and R(λ) = E ℓ(λ), the share of inputs that early exit *breaks*. The accuracy loss against the final exit
is R(λ) − P(policy right AND final exit wrong) ≤ R(λ), so R(λ) ≤ D bounds the accuracy drop by D (it
gives no credit for inputs that early exit repairs, hence is a little conservative). This is the
"performance gap" risk of risk-controlled early exit (Jazbec et al., 2024, "Fast yet Safe"), taken
one-sided so that the loss is 0/1.

**The p-value.** ℓ is 0/1, so on n i.i.d. validation inputs the loss count is exactly Binomial(n, R(λ));
the null H_λ: R(λ) > D is rejected with p_λ = P(Binomial(n, D) ≤ count), an exact and valid p-value.
Hoeffding–Bentkus (LTT's default for losses in [0, 1]) is also offered: its Bentkus term is e × the same
binomial tail and its Hoeffding term ignores that the loss is 0/1, so for this loss it is never tighter.

**The selection.** Fixed-sequence testing (family-wise error control with no multiplicity cost): the
candidates are ordered from the slowest (safest) setting to the fastest — each policy's exits move
monotonically along its threshold axis, so this is the axis order, fixed before any label is read — and
tested in turn at level δ = 1 − confidence, stopping at the first non-rejection. The fastest rejected
setting then satisfies P(R(λ̂) ≤ D) ≥ 1 − δ over the draw of the validation split.

The grid values themselves come from the validation inputs' signal values (never their labels); the
empirical coverage over random validation/held-out splits (``benchmarks/risk_coverage.py``) checks the
guarantee end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom

#: The p-value methods :func:`p_values` knows.
METHODS = ("binomial", "hoeffding-bentkus")

#: What :func:`harm` counts, in words (recorded with a calibrated policy).
RISK = "P(early-exit prediction wrong and final-exit prediction right), an upper bound on the accuracy drop"


def check_level(name: str, value: Any) -> float:
    """``value`` as a float strictly inside (0, 1); ``name`` says which quantity for the error."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r}: expected a number strictly between 0 and 1") from None
    if not (math.isfinite(number) and 0.0 < number < 1.0):
        raise ValueError(f"{name} {value!r}: expected a number strictly between 0 and 1")
    return number


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"risk test {method!r}: expected one of {', '.join(METHODS)}")
    return method


def binomial_p_value(losses: Any, n: int, max_risk: float) -> np.ndarray:
    """P(Binomial(n, max_risk) ≤ losses): the exact p-value of H: R > max_risk for a 0/1 loss count."""
    return np.asarray(binom.cdf(np.asarray(losses), int(n), float(max_risk)), dtype=np.float64)


def hoeffding_bentkus_p_value(losses: Any, n: int, max_risk: float) -> np.ndarray:
    """LTT's Hoeffding–Bentkus p-value (Angelopoulos et al., 2021, eq. 9) for a risk in [0, 1].

    min(exp(−n·h(min(R̂, α), α)), e·P(Binomial(n, α) ≤ ⌈n·R̂⌉)), h(a, b) = a log(a/b) + (1−a) log((1−a)/(1−b)).
    """
    count = np.asarray(losses, dtype=np.float64)
    a, alpha = np.minimum(count / n, max_risk), float(max_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(a > 0, a * np.log(a / alpha), 0.0)
        second = np.where(a < 1, (1 - a) * np.log((1 - a) / (1 - alpha)), 0.0)
    hoeffding = np.exp(-n * (first + second))
    bentkus = math.e * binom.cdf(np.ceil(count - 1e-9), int(n), alpha)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def p_values(losses: Any, n: int, max_risk: float, method: str = "binomial") -> np.ndarray:
    """One valid p-value of H: R > ``max_risk`` per loss count in ``losses`` (n inputs each)."""
    if n < 1:
        raise ValueError(f"n={n}: a risk test needs at least one validation input")
    test = binomial_p_value if check_method(method) == "binomial" else hoeffding_bentkus_p_value
    return test(losses, n, check_level("max risk", max_risk))


def fixed_sequence(ordered_p_values: Any, delta: float) -> int:
    """How many hypotheses fixed-sequence testing rejects: the length of the leading run with p ≤ delta."""
    p = np.asarray(ordered_p_values, dtype=np.float64)
    above = np.flatnonzero(~(p <= delta))  # NaN never rejects
    return int(above[0]) if above.size else int(p.size)


def upper_bound(losses: int, n: int, confidence: float, method: str = "binomial") -> float:
    """The smallest risk level the test would certify for this count at ``confidence`` (bisection).

    For ``binomial`` this is the one-sided Clopper–Pearson upper bound. It holds for one setting taken
    alone; the guarantee for the *selected* setting is ``risk <= max_risk``.
    """
    delta = 1.0 - check_level("confidence", confidence)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid >= 1.0 or float(p_values(losses, n, mid, method)) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def harm(predictions: Any, final_prediction: Any, labels: Any) -> np.ndarray:
    """The per-input loss [T, N]: the setting's prediction is wrong where the final exit's is right."""
    pred = np.atleast_2d(np.asarray(predictions))
    labels = np.asarray(labels)
    final_right = np.asarray(final_prediction) == labels
    return (pred != labels[None, :]) & final_right[None, :]


@dataclass
class RiskControl:
    """The outcome of Learn-then-Test over a grid.

    ``losses`` [T]: the loss count of every grid setting (grid order); ``speedup`` [T]: their speed-ups;
    ``order``: the grid indices from the slowest to the fastest (the testing order); ``p_values``: the
    p-values of the settings tested, in that order; ``certified``: how many were rejected (certified).
    """

    max_risk: float
    confidence: float
    method: str
    n: int
    losses: np.ndarray
    speedup: np.ndarray
    order: np.ndarray
    p_values: np.ndarray
    certified: int

    @property
    def tested(self) -> int:
        """How many candidates were tested (the certified ones plus the first failure, if any)."""
        return int(self.p_values.size)

    @property
    def index(self) -> int | None:
        """The grid index of the fastest certified setting, or None when none was certified."""
        return int(self.order[self.certified - 1]) if self.certified else None

    def risk(self, index: int) -> float:
        """The empirical risk of grid setting ``index`` on the calibration split."""
        return float(self.losses[index]) / self.n

    def bound(self, index: int) -> float:
        """The per-setting upper confidence bound on the risk of grid setting ``index``."""
        return upper_bound(int(self.losses[index]), self.n, self.confidence, self.method)

    def p_value(self, index: int) -> float | None:
        """The p-value of grid setting ``index`` if it was tested."""
        where = np.flatnonzero(self.order[: self.tested] == index)
        return float(self.p_values[where[0]]) if where.size else None


def learn_then_test(
    losses: Any, n: int, speedup: Any, max_risk: float, confidence: float, method: str = "binomial"
) -> RiskControl:
    """Fixed-sequence Learn-then-Test: certify settings, slowest first, while p ≤ 1 − confidence.

    ``losses`` [T]: loss counts of the grid settings on ``n`` validation inputs; ``speedup`` [T]: their
    speed-ups, which fix the testing order (slowest first; ties keep the grid order).
    """
    counts = np.asarray(losses, dtype=np.int64).reshape(-1)
    speed = np.asarray(speedup, dtype=np.float64).reshape(-1)
    if counts.shape != speed.shape or counts.size == 0:
        raise ValueError(f"{counts.size} loss counts for {speed.size} speed-ups: expected one per setting")
    delta = 1.0 - check_level("confidence", confidence)
    order = np.argsort(speed, kind="stable")
    p = p_values(counts[order], n, max_risk, method)
    certified = fixed_sequence(p, delta)
    tested = min(certified + 1, p.size)
    return RiskControl(
        float(max_risk), float(confidence), method, int(n), counts, speed, order, p[:tested], certified
    )
