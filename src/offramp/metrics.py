"""Metrics: GLUE task scores (top of file) and, below, measurements of early-exit behaviour."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from offramp.data import get_task_spec

# ---------------------------------------------------------------------------------------------------------
# GLUE task metrics
# ---------------------------------------------------------------------------------------------------------
#
# Keys: "accuracy" (SST-2, RTE, QNLI, MNLI, WNLI), "f1" + "accuracy" (MRPC, QQP; F1 of class 1),
# "matthews_corrcoef" (CoLA), "pearson" + "spearmanr" (STS-B). The first key of each task is its
# primary metric, used for model selection.

_KINDS = ("classification", "regression")


def _resolve(task_or_kind: str | None, regression: bool) -> tuple[tuple[str, ...], bool]:
    """Metric names and whether the targets are real numbers, for a task, a kind, or None."""
    if task_or_kind is None:
        return (("pearson", "spearmanr"), True) if regression else (("accuracy",), False)
    if isinstance(task_or_kind, str) and task_or_kind.lower() in _KINDS:
        is_reg = task_or_kind.lower() == "regression"
        return (("pearson", "spearmanr"), True) if is_reg else (("accuracy",), False)
    spec = get_task_spec(task_or_kind)
    return spec.metrics, spec.is_regression


def primary_metric(task: str | None, regression: bool = False) -> str:
    """The metric key used for model selection: accuracy, f1 (MRPC, QQP), matthews_corrcoef (CoLA),
    pearson (STS-B and any regression)."""
    return _resolve(task, regression)[0][0]


def _as_predictions(predictions: Any, is_regression: bool) -> np.ndarray:
    """Class ids, per-class scores (argmax taken), or regression outputs of shape (n,) or (n, 1)."""
    arr = np.asarray(predictions.detach().cpu() if hasattr(predictions, "detach") else predictions)
    if arr.ndim == 2:
        if is_regression:
            if arr.shape[1] != 1:
                raise ValueError(f"regression predictions of shape {arr.shape}: expected (n,) or (n, 1)")
            arr = arr[:, 0]
        else:
            arr = arr.argmax(axis=1)
    if arr.ndim != 1:
        raise ValueError(f"predictions of shape {arr.shape}: expected a 1-D array (or 2-D scores)")
    return arr.astype(np.float64) if is_regression else arr.astype(np.int64)


def _correlation(fn: Any, x: np.ndarray, y: np.ndarray) -> float:
    """A correlation coefficient; NaN (without a warning) when either side is constant."""
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(x, y)[0])


def task_metrics(
    task_or_kind: str | None,
    predictions: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    regression: bool = False,
) -> dict[str, float]:
    """GLUE scores of ``predictions`` against ``labels``.

    ``task_or_kind`` is a GLUE task (aliases accepted), ``"classification"``, ``"regression"``, or
    None (accuracy; pearson/spearmanr when ``regression=True``). Classification predictions may be
    class ids or 2-D per-class scores (argmax taken). Returns plain floats keyed by metric name.
    """
    names, is_reg = _resolve(task_or_kind, regression)
    preds = _as_predictions(predictions, is_reg)
    gold = _as_predictions(labels, is_reg)
    if len(preds) != len(gold):
        raise ValueError(f"{len(preds)} predictions for {len(gold)} labels; expected equal lengths")
    if len(gold) == 0:
        raise ValueError("no predictions to score; expected at least one row")
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(accuracy_score(gold, preds))
        elif name == "f1":
            out[name] = float(f1_score(gold, preds, pos_label=1, average="binary", zero_division=0.0))
        elif name == "matthews_corrcoef":
            out[name] = float(matthews_corrcoef(gold, preds))
        elif name == "pearson":
            out[name] = _correlation(stats.pearsonr, preds, gold)
        elif name == "spearmanr":
            out[name] = _correlation(stats.spearmanr, preds, gold)
        else:  # pragma: no cover - guarded by the task table
            raise ValueError(f"unknown metric {name!r}")
    return out


def primary_scores(
    task: str | None, predictions: np.ndarray, labels: np.ndarray, regression: bool
) -> tuple[str, np.ndarray]:
    """The primary metric for every row of ``predictions`` [T, N] (vectorised for accuracy).

    Undefined scores (a constant prediction's correlation) count as -1 so a search never prefers them.
    """
    metric = primary_metric(task, regression=regression)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if metric == "accuracy":
        return metric, (predictions == labels[None, :]).mean(1)
    values = [task_metrics(task, row, labels, regression=regression)[metric] for row in predictions]
    return metric, np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-1.0)


def exit_predictions(logits: Any, regression: bool) -> Any:
    """Predictions from logits [..., C]: the argmax class, or the value itself for regression."""
    return logits[..., 0] if regression else logits.argmax(-1)


# ---------------------------------------------------------------------------------------------------------
# Early-exit / speed-up metrics (below)
# ---------------------------------------------------------------------------------------------------------

# Speed-up conventions. All three are functions of the layers each input costs, l(n): the cost of the
# exit it left at. For a multi-exit model that is the exit's layer; for a multi-model cascade it is the
# summed depths of every member it ran (SWEET §3.3). L is the full model's depth (the last exit's layer).
# Arrays may carry leading axes (e.g. a threshold grid [T, N]); the reduction is over the last axis, so
# a sweep gives one value per threshold.


def _as_int_array(values: Any) -> np.ndarray:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.int64)


@dataclass(frozen=True)
class ExitCosts:
    """What leaving at each exit costs: ``costs[k]`` layers for exit slot k; ``depth`` = L of the full model.

    One cost model for every kind of model, so no caller needs to know whether it holds a cascade:
    :meth:`of_exits` for a multi-exit model (cost = the exit's layer), :meth:`cascade` for a multi-model
    cascade (cost = the summed depths of the members run so far).
    """

    costs: tuple[int, ...]
    depth: int

    def __post_init__(self) -> None:
        if not self.costs or any(int(c) < 1 for c in self.costs) or self.depth < 1:
            raise ValueError(f"exit costs {list(self.costs)} / depth {self.depth}: expected positive layers")

    @classmethod
    def of_exits(cls, exits: Sequence[int]) -> ExitCosts:
        """A multi-exit model: an input leaving at the exit after layer l costs l layers."""
        layers = [int(v) for v in exits]
        if not layers or min(layers) < 1:
            raise ValueError(f"exits {list(exits)}: expected a non-empty list of 1-based layer numbers")
        return cls(tuple(layers), layers[-1])

    @classmethod
    def cascade(cls, depths: Sequence[int]) -> ExitCosts:
        """A multi-model cascade of members with these depths: leaving at member k costs depths[0..k]."""
        layers = [int(v) for v in depths]
        if not layers or min(layers) < 1:
            raise ValueError(f"member depths {list(depths)}: expected a non-empty list of layer counts")
        return cls(tuple(int(c) for c in np.cumsum(layers)), layers[-1])

    @property
    def is_cascade(self) -> bool:
        """True when some exit costs more than its own depth (members re-run the early layers)."""
        return self.costs[-1] != self.depth

    def layers(self, exit_slot: Any) -> np.ndarray:
        """l(n) for 0-based exit slots [..., N]."""
        slots = _as_int_array(exit_slot)
        if slots.size and (slots.min() < 0 or slots.max() >= len(self.costs)):
            raise ValueError(
                f"exit slots must lie in 0..{len(self.costs) - 1}; got {slots.min()}..{slots.max()}"
            )
        return np.asarray(self.costs, dtype=np.int64)[slots]

    def speedup(self, exit_slot: Any) -> float | np.ndarray:
        """COSEE eq. 12 / PABEE: L·N / Σ_n l(n)."""
        return speedup_ratio(self.layers(exit_slot), self.depth)

    def summary(self, exit_slot: Any) -> dict[str, Any]:
        """All three conventions plus the exit histogram, for one setting (exit slots [N])."""
        slots = _as_int_array(exit_slot)
        layers = self.layers(slots)
        return {
            "speedup": speedup_ratio(layers, self.depth),
            "saved_layers": saved_layers_fraction(layers, self.depth),
            "cost_fraction": cost_fraction(layers, self.depth),
            "mean_layers": float(layers.mean()),
            "exit_counts": np.bincount(slots, minlength=len(self.costs)).tolist(),
        }


def _layer_totals(layers: Any, total_layers: int) -> tuple[np.ndarray, int]:
    arr = np.asarray(layers, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError("no inputs: expected at least one exit layer")
    if total_layers < 1:
        raise ValueError(f"total_layers {total_layers}: expected the full model's depth (>= 1)")
    return arr.sum(-1), arr.shape[-1]


def speedup_ratio(layers: Any, total_layers: int) -> float | np.ndarray:
    """COSEE eq. 12 / PABEE: L·N / Σ_n l(n) ("2.0×"); 1.0 for the full model."""
    total, n = _layer_totals(layers, total_layers)
    out = total_layers * n / total
    return float(out) if np.ndim(out) == 0 else out


def saved_layers_fraction(layers: Any, total_layers: int) -> float | np.ndarray:
    """PCEE eq. 4: 1 − Σ_n l(n) / (N·L) ("50%" saved); 0.0 for the full model."""
    total, n = _layer_totals(layers, total_layers)
    out = 1.0 - total / (n * total_layers)
    return float(out) if np.ndim(out) == 0 else out


def cost_fraction(layers: Any, total_layers: int) -> float | np.ndarray:
    """SWEET appendix eq. 1: Σ_i S_i·L_i / (L_K·Σ_i S_i), the share of the full model's cost.

    S_i counts the inputs answered by classifier i and L_i is its cost (for a multi-model cascade the
    summed depths of models 1..i, so a cascade can cost more than 1.0), so the sum is Σ_n l(n) / (N·L).
    """
    total, n = _layer_totals(layers, total_layers)
    out = total / (n * total_layers)
    return float(out) if np.ndim(out) == 0 else out
