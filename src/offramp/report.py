"""Speed–accuracy evaluation of every exit policy on cached exit outputs, as typed results.

:func:`evaluate_policies` turns :class:`~offramp.evaluate.ExitOutputs` into an :class:`EvaluationResult`
(per-exit scores, each policy's curve, its score at set speed-ups and AUC, the operating point nearest 2×,
DIS, premature / delayed exits, overthinking, the calibrated setting, and for many-class tasks macro-F1,
per-class scores and a confusion matrix). :func:`evaluate_model` adds the cached pass over a split and
gives the :class:`EvaluationReport` whose ``to_json()`` is ``offramp evaluate``'s JSON (README table).
All numbers come from ``simulate.sweep``, ``metrics`` and ``analysis``; rendering lives in ``render.py``
and ``plots.py``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .analysis import (
    curve_auc,
    difficulty_inversion_score,
    exit_failure_rates,
    exit_histogram,
    interpolate_at,
    overthinking_rate,
)
from .data import TextDataset
from .evaluate import ExitOutputs, cached_exit_outputs, scores_from_outputs
from .metrics import ExitCosts, cost_fraction, exit_predictions, primary_scores, saved_layers_fraction
from .model import ExitModel
from .policies import Policy, PolicyError, get_policy, list_policies, policy_from_config, regression_policies
from .signals import SIGNALS
from .simulate import simulate, sweep

TARGETS: tuple[float, ...] = (1.5, 2.0, 3.0)
#: Signals whose per-exit Difficulty Inversion Score is reported (learned only when the model has heads).
DIS_SIGNALS: tuple[str, ...] = ("maxprob", "entropy", "norm_energy", "learned")
AUC_RANGE: tuple[float, float] = (1.0, 3.0)
#: The operating point whose exit histogram and failure rates are reported.
NEAR_SPEEDUP = 2.0


def target_key(target: float) -> str:
    """JSON key of a target speed-up: ``2.0`` -> ``"2"``, ``1.5`` -> ``"1.5"``."""
    return f"{target:g}"


def jsonable(value: Any) -> Any:
    """Lists, ints and floats only; NaN and infinities become None (JSON null)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _opt(value: Any) -> float | None:
    """A finite float, or None."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def select_policies(
    patterns: Sequence[str] | None = None, regression: bool = False, has_confidence: bool = False
) -> list[str]:
    """Registered policy names matching ``patterns`` (shell wildcards; default all) that apply here.

    Policies reading learned-exit confidences are left out when the outputs have none; regression
    outputs keep only regression-capable policies. A pattern matching no policy at all is an error.
    """
    names: list[str] = []
    for pattern in patterns or ["*"]:
        found = list_policies(pattern)
        if not found:
            raise PolicyError(f"no policy matches {pattern!r}; known policies: {', '.join(list_policies())}")
        names += [n for n in found if n not in names]
    allowed = set(regression_policies()) if regression else None
    return [
        n
        for n in names
        if (allowed is None or n in allowed) and (has_confidence or not get_policy(n).needs_confidence)
    ]


# ---------------------------------------------------------------------------------------------------------
# Typed results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ExitScore:
    """One exit's scores when every input leaves there: ``metric``'s ``score``, every task metric, and the
    mean loss (cross-entropy, or squared error for regression)."""

    exit: int
    layer: int
    metric: str
    score: float
    metrics: dict[str, float]
    loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return jsonable(
            {"exit": self.exit, "layer": self.layer, "metric": self.metric, "score": self.score}
            | {"metrics": self.metrics, "loss": self.loss}
        )


@dataclass
class Curve:
    """A policy's sweep: per grid setting the threshold, the three speed-up conventions and the score."""

    threshold: np.ndarray
    speedup: np.ndarray
    saved_layers: np.ndarray
    cost_fraction: np.ndarray
    score: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return jsonable(
            {
                "threshold": self.threshold,
                "speedup": self.speedup,
                "saved_layers": self.saved_layers,
                "cost_fraction": self.cost_fraction,
                "score": self.score,
            }
        )

    def points(self, digits: int = 9) -> tuple[tuple[float, float], ...]:
        """The distinct (speed-up, score) points, sorted and rounded: equal for curves that coincide."""
        x, y = np.asarray(self.speedup, dtype=float), np.asarray(self.score, dtype=float)
        pairs = {(round(a, digits), round(b, digits)) for a, b in zip(x, y, strict=True) if math.isfinite(a)}
        return tuple(sorted(pairs))


@dataclass
class OperatingPoint:
    """One setting: speed-ups by every convention, score, exit histogram and (classification) failure rates.

    ``premature`` / ``delayed``: COSEE app. D rates (None where no such decision was taken, or for
    regression, where ``exit_decisions`` is None too); ``threshold``: the grid value (None: a saved policy).
    """

    speedup: float
    saved_layers: float
    cost_fraction: float
    mean_layers: float
    exit_counts: list[int]
    score: float
    premature: float | None = None
    delayed: float | None = None
    exit_decisions: int | None = None
    continue_decisions: int | None = None
    threshold: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "speedup": self.speedup,
            "saved_layers": self.saved_layers,
            "cost_fraction": self.cost_fraction,
            "mean_layers": self.mean_layers,
            "exit_counts": list(self.exit_counts),
            "score": self.score,
        }
        if self.exit_decisions is not None:
            out |= {
                "premature": self.premature,
                "delayed": self.delayed,
                "exit_decisions": self.exit_decisions,
                "continue_decisions": self.continue_decisions,
            }
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return jsonable(out)


@dataclass
class PolicyEvaluation:
    """One policy: its ``curve``, score ``at_speedup`` per target key (None: not reached), ``auc``, and
    the grid setting nearest 2× (``near_2x``)."""

    curve: Curve
    at_speedup: dict[str, float | None]
    auc: float | None
    near_2x: OperatingPoint

    def to_json(self) -> dict[str, Any]:
        return {
            "curve": self.curve.to_json(),
            "at_speedup": jsonable(self.at_speedup),
            "auc": jsonable(self.auc),
            "near_2x": self.near_2x.to_json(),
        }


@dataclass
class Calibrated:
    """The model's saved policy (``policy``, as in ``offramp.json``) applied to this split."""

    policy: dict[str, Any]
    point: OperatingPoint

    @property
    def calibration(self) -> dict[str, Any]:
        """What ``offramp calibrate`` recorded: rule, target, split, the speed-up it gave there, ..."""
        return dict(self.policy.get("calibration") or {})

    @property
    def target_speedup(self) -> float | None:
        """The speed-up the policy was calibrated for (None for the BEEM rule or a max-drop goal)."""
        return _opt(self.calibration.get("target_speedup"))

    def to_json(self) -> dict[str, Any]:
        return jsonable({"policy": self.policy}) | self.point.to_json()


@dataclass
class ClassScores:
    """Per-class precision, recall, F1 and support of one exit (``label``: the class name)."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


@dataclass
class ClassReport:
    """Many-class tasks: the final exit's macro-F1, per-class scores and confusion matrix.

    ``confusion[i][j]``: inputs of true class i predicted as class j (classes in ``labels`` order).
    """

    labels: list[str]
    macro_f1: float
    per_class: list[ClassScores]
    confusion: list[list[int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "macro_f1": jsonable(self.macro_f1),
            "per_class": [c.to_json() for c in self.per_class],
            "confusion": [list(map(int, row)) for row in self.confusion],
        }


@dataclass
class Analysis:
    """``dis``: Difficulty Inversion Score per signal and exit; ``overthinking``: share right at some exit
    but wrong at the last (both empty / None for regression)."""

    dis: dict[str, list[float | None]] = field(default_factory=dict)
    overthinking: float | None = None

    def to_json(self) -> dict[str, Any]:
        return jsonable({"dis": self.dis, "overthinking": self.overthinking})


@dataclass
class OneClassExit:
    """An exit that predicts the same class for every input (a collapsed head)."""

    exit: int
    layer: int
    label: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EvaluationResult:
    """Every policy's speed–accuracy behaviour on one split (see the module docstring)."""

    metric: str
    exits: list[int]
    examples: int
    targets: list[float]
    auc_range: tuple[float, float]
    multi_model: bool
    per_exit: list[ExitScore]
    policies: dict[str, PolicyEvaluation]
    analysis: Analysis
    calibrated: Calibrated | None = None
    classes: ClassReport | None = None
    one_class_exits: list[OneClassExit] = field(default_factory=list)

    @property
    def final_score(self) -> float | None:
        """The full model's (last exit's) score."""
        return _opt(self.per_exit[-1].score)

    @property
    def target_keys(self) -> list[str]:
        return [target_key(t) for t in self.targets]

    def to_json(self) -> dict[str, Any]:
        """The report JSON: ``exits`` are the exit layers, ``per_exit`` their scores."""
        return {
            "metric": self.metric,
            "exits": list(self.exits),
            "examples": self.examples,
            "targets": list(self.targets),
            "auc_range": list(self.auc_range),
            "multi_model": self.multi_model,
            "final_score": self.final_score,
            "per_exit": [{"exit": r.exit, "layer": r.layer, "score": _opt(r.score)} for r in self.per_exit],
            **self.sections_json(),
        }

    def sections_json(self) -> dict[str, Any]:
        """The sections shared with the evaluate JSON (policies, analysis, calibrated, classes, ...)."""
        return {
            "policies": {name: p.to_json() for name, p in self.policies.items()},
            "analysis": self.analysis.to_json(),
            "calibrated": None if self.calibrated is None else self.calibrated.to_json(),
            "classes": None if self.classes is None else self.classes.to_json(),
            "one_class_exits": [e.to_json() for e in self.one_class_exits],
        }


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------


def evaluate_policies(
    outputs: ExitOutputs,
    task: str | None,
    regression: bool,
    policies: Sequence[str] | None = None,
    grid_size: int = 100,
    targets: Sequence[float] = TARGETS,
    calibrated_policy: dict[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
) -> EvaluationResult:
    """Sweep every applicable policy over cached exit outputs and run the papers' analyses.

    The cost model (multi-exit model or cascade) comes from ``outputs.costs``. BEEM-A's accuracy weights
    are fitted on these same outputs (``Policy.fit``; optimistic on a test split). ``label_names`` name the
    classes in the many-class report and the one-class warning. Warns once when an exit predicts one class
    for every input.
    """
    if outputs.labels is None:
        raise ValueError("a speed–accuracy report needs labels; these outputs have none")
    logits = np.asarray(outputs.logits, dtype=np.float32)
    labels = np.asarray(outputs.labels)
    correct = None if regression else exit_predictions(logits, False) == labels[None, :]
    per_exit = [ExitScore(**row) for row in scores_from_outputs(outputs, task, regression)]
    names = select_policies(policies, regression, outputs.confidence is not None)
    fitted = [get_policy(name).fit(logits, labels) for name in names]
    evaluations = {
        name: evaluate_policy(pol, outputs, task, grid_size, targets, correct)
        for name, pol in zip(names, fitted, strict=True)
    }
    calibrated = None
    if calibrated_policy:
        calibrated = _calibrated(calibrated_policy, outputs, task, regression, correct)
    names_or_ids = [str(v) for v in (label_names or range(logits.shape[-1]))]
    return EvaluationResult(
        metric=per_exit[0].metric,
        exits=[int(v) for v in outputs.exits],
        examples=int(labels.shape[0]),
        targets=[float(t) for t in targets],
        auc_range=AUC_RANGE,
        multi_model=outputs.costs.is_cascade,
        per_exit=per_exit,
        policies=evaluations,
        analysis=analyse(logits, outputs.confidence, correct),
        calibrated=calibrated,
        classes=None
        if regression
        else class_report(exit_predictions(logits[-1], False), labels, names_or_ids),
        one_class_exits=[] if regression else one_class_exits(logits, list(outputs.exits), names_or_ids),
    )


def evaluate_policy(
    policy: Policy,
    outputs: ExitOutputs,
    task: str | None,
    grid_size: int,
    targets: Sequence[float],
    correct: np.ndarray | None,
) -> PolicyEvaluation:
    """One policy's sweep over its own grid: curve, scores at the targets, AUC, the setting nearest 2×."""
    costs = outputs.costs
    res = sweep(policy, outputs, costs, task=task, grid_size=grid_size)
    speed = np.atleast_1d(np.asarray(res.speedup, dtype=float))
    score = np.asarray(res.score, dtype=float)
    curve = Curve(
        threshold=res.thresholds,
        speedup=speed,
        saved_layers=np.atleast_1d(saved_layers_fraction(res.layers, costs.depth)),
        cost_fraction=np.atleast_1d(cost_fraction(res.layers, costs.depth)),
        score=score,
    )
    at = interpolate_at(speed, score, targets)
    # The grid setting nearest 2x (ties: the better score), for histograms and failure rates.
    near = int(np.lexsort((-score, np.abs(speed - NEAR_SPEEDUP)))[0])
    point = operating_point(res.exit_slot[near], costs, score[near], correct)
    point.threshold = jsonable(np.asarray(res.thresholds)[near])
    return PolicyEvaluation(
        curve=curve,
        at_speedup={target_key(t): _opt(v) for t, v in zip(targets, at, strict=True)},
        auc=_opt(curve_auc(speed, score, *AUC_RANGE)),
        near_2x=point,
    )


def operating_point(
    exit_slot: np.ndarray, costs: ExitCosts, score: float, correct: np.ndarray | None
) -> OperatingPoint:
    """The summary of one setting from where each input left (0-based exit slots [N])."""
    slots = np.asarray(exit_slot)
    summary = costs.summary(slots)
    point = OperatingPoint(
        speedup=float(summary["speedup"]),
        saved_layers=float(summary["saved_layers"]),
        cost_fraction=float(summary["cost_fraction"]),
        mean_layers=float(summary["mean_layers"]),
        exit_counts=exit_histogram(slots, len(costs.costs)).tolist(),
        score=float(score),
    )
    if correct is not None:
        rates = exit_failure_rates(slots, correct)
        point.premature, point.delayed = _opt(rates["premature"]), _opt(rates["delayed"])
        point.exit_decisions, point.continue_decisions = rates["exit_decisions"], rates["continue_decisions"]
    return point


def _calibrated(
    config: dict[str, Any], outputs: ExitOutputs, task: str | None, regression: bool, correct: Any
) -> Calibrated:
    """The saved policy run over these outputs at its own threshold."""
    logits = np.asarray(outputs.logits, dtype=np.float32)
    sim = simulate(policy_from_config(config), logits, None, outputs.confidence, regression=regression)
    score = primary_scores(task, np.asarray(sim.prediction), np.asarray(outputs.labels), regression)[1][0]
    return Calibrated(
        dict(config), operating_point(np.asarray(sim.exit_slot)[0], outputs.costs, score, correct)
    )


def analyse(logits: np.ndarray, confidence: Any, correct: np.ndarray | None) -> Analysis:
    """Overthinking and each signal's per-exit Difficulty Inversion Score (classification only)."""
    if correct is None:
        return Analysis()
    conf = None if confidence is None else torch.as_tensor(np.asarray(confidence, dtype=np.float32))
    dis: dict[str, list[float | None]] = {}
    for name in DIS_SIGNALS:
        if name == "learned" and conf is None:
            continue
        sig = SIGNALS[name]
        values = sig(torch.as_tensor(logits), conf).numpy()
        dis[name] = [
            _opt(difficulty_inversion_score(values[k], correct[k], sig.confidence_positive))
            for k in range(len(values))
        ]
    return Analysis(dis, overthinking_rate(correct))


def class_report(predictions: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> ClassReport | None:
    """Macro-F1, per-class scores and the confusion matrix, for more than two classes (else None)."""
    if len(names) <= 2:
        return None
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0.0
    )
    per_class = [
        ClassScores(str(names[i]), float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i in ids
    ]
    matrix = confusion_matrix(labels, predictions, labels=ids)
    return ClassReport(list(map(str, names)), float(np.mean(f1)), per_class, matrix.tolist())


def one_class_exits(logits: np.ndarray, exits: list[int], names: Sequence[str]) -> list[OneClassExit]:
    """Exits predicting one class for every input; warns once (one line) when there are any."""
    preds = exit_predictions(np.asarray(logits), False)
    if preds.shape[1] < 2:
        return []
    found = [
        OneClassExit(k + 1, int(exits[k]), str(names[int(row[0])]))
        for k, row in enumerate(preds)
        if (row == row[0]).all()
    ]
    if found:
        which = ", ".join(f"layer {e.layer} → {e.label!r}" for e in found)
        warnings.warn(
            f"{len(found)} of {len(exits)} exits predict one class for every input ({which}): "
            "those heads have collapsed; check training",
            stacklevel=3,
        )
    return found


# ---------------------------------------------------------------------------------------------------------
# A model on a split: the evaluate command's result
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    """What ``offramp evaluate`` measured: where, how long, whether from the cache, and the evaluation."""

    model_dir: str
    task: str | None
    split: str
    seconds: float
    cached_outputs: bool
    result: EvaluationResult

    @property
    def examples(self) -> int:
        return self.result.examples

    def to_json(self) -> dict[str, Any]:
        """The evaluate JSON (README "`evaluate` JSON fields"): ``exits`` are per-exit score rows here."""
        rows = [r.to_json() for r in self.result.per_exit]
        return {
            "model_dir": self.model_dir,
            "task": self.task,
            "split": self.split,
            "examples": self.examples,
            "metric": self.result.metric,
            "exits": rows,
            "final": rows[-1],
            "seconds": self.seconds,
            "cached_outputs": self.cached_outputs,
            "targets": list(self.result.targets),
            "auc_range": list(self.result.auc_range),
            "multi_model": self.result.multi_model,
            **self.result.sections_json(),
        }


def evaluate_model(
    model: ExitModel,
    model_dir: str | os.PathLike[str],
    data: TextDataset,
    split: str,
    *,
    cache: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    policies: Sequence[str] | None = None,
    grid_size: int = 100,
    batch_size: int = 128,
    progress: bool = False,
    notify: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Run (or reuse from ``cache``) every exit over ``data`` and evaluate every policy on it.

    The caller checks that ``data`` fits the model (``checks.check_data_matches``). ``seconds`` times the
    pass over the split (or loading the cache); the model's saved policy is reported as calibrated.
    """
    start = time.perf_counter()
    outputs, cached = cached_exit_outputs(
        model, model_dir, data, cache, batch_size, progress, use_cache, notify
    )
    seconds = time.perf_counter() - start
    task = data.task or model.config.task
    result = evaluate_policies(
        outputs,
        task,
        model.is_regression,
        policies=policies,
        grid_size=grid_size,
        calibrated_policy=model.config.policy,
        label_names=model.config.label_names,
    )
    return EvaluationReport(str(model_dir), task, split, seconds, cached, result)
