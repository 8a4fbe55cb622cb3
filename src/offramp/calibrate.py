"""Calibration on a validation split: thresholds that meet a goal, temperatures, BEEM-A weights.

Everything here works on cached per-exit outputs (:class:`~offramp.evaluate.ExitOutputs`) of a
*validation* split — never the evaluation split — through :func:`offramp.simulate.sweep`, so a whole
threshold grid costs one vectorised pass. Three goals pick the threshold:

* ``target_speedup``: the slowest setting whose layer-count speed-up (COSEE eq. 12, L·N/Σ l(n)) is at
  least the target (the most accurate one that still meets it). Needs no labels with ``unlabeled=True``:
  where inputs exit depends only on the exits' outputs;
* ``rule="beem"``: BEEM's threshold choice (see :func:`calibrate` for the exact rule);
* ``max_drop``: the fastest setting whose task score is within ``max_drop`` points of the final exit's;
  with ``confidence=C`` instead the fastest setting whose accuracy loss against the final exit is at most
  ``max_drop`` points with probability >= C, by Learn-then-Test (:mod:`offramp.risk`).

The result is a :class:`CalibrationResult`; its :meth:`~CalibrationResult.to_config` dict
(``{"name", "params", "temperatures", "calibration"}``) is stored as ``model.config.policy`` and used by
default by :class:`~offramp.engine.EarlyExitEngine`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import TextDataset
from .evaluate import ExitOutputs
from .io import write_json_atomic
from .metrics import ExitCosts, exit_predictions, primary_scores
from .model import ExitModel
from .policies import BEEM, ExitOutput, Policy, PolicyError, get_policy, policy_from_config
from .risk import RISK, check_level, check_method, harm, learn_then_test
from .simulate import (
    SweepResult,
    axis_value,
    index_for_speedup,
    pick_index,
    simulate,
    sweep,
    threshold_for_speedup,
)

# ---------------------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------------------


_SPEED_KEYS = ("speedup", "saved_layers", "cost_fraction", "mean_layers", "exit_counts")


@dataclass
class CalibrationResult:
    """A calibrated policy and the facts of its calibration.

    ``rule``: ``"speedup"``, ``"beem"``, ``"accuracy"`` (``max_drop``) or ``"risk"`` (``max_drop`` with a
    ``confidence``: Learn-then-Test); ``split``: what it was calibrated
    on; ``n``: rows; ``exits``: exit layers; ``speed``: the chosen setting's speed-up summary on that split
    (``speedup``, ``saved_layers``, ``cost_fraction``, ``mean_layers``, ``exit_counts``); ``metric``,
    ``final_score`` (the final exit's) and ``score`` (the chosen setting's) are None without labels;
    ``details``: what the goal adds (``target_speedup``, ``max_drop``, ``compare``, ``grid_size``, BEEM's
    ``early_exits`` / ``early_error`` / ``final_error_on_reference``, ``weights_from``, ``unlabeled``; the
    guarantee's ``confidence``, ``method``, ``risk``, ``certified``, ``tested``, ...: see :func:`calibrate`).
    """

    policy: Policy
    rule: str
    split: str | None
    n: int
    exits: list[int]
    speed: dict[str, Any]
    metric: str | None = None
    final_score: float | None = None
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Layer-count speed-up of the chosen setting on the calibration split."""
        return float(self.speed["speedup"])

    def calibration(self) -> dict[str, Any]:
        """The ``"calibration"`` record saved with the policy (scores only when there were labels)."""
        info: dict[str, Any] = {"split": self.split, "n": self.n, "exits": list(self.exits)}
        if self.metric is not None:
            info.update({"metric": self.metric, "final_score": self.final_score})
        info["rule"] = self.rule
        info.update(self.details)
        info.update(self.speed)
        if self.score is not None:
            info["score"] = self.score
        return info

    def to_config(self) -> dict[str, Any]:
        """What ``offramp.json["policy"]`` stores: ``{"name", "params", "temperatures", "calibration"}``."""
        config = self.policy.to_config()
        config["calibration"] = self.calibration()
        return config

    def to_json(self) -> dict[str, Any]:
        """The same plain-JSON dict as :meth:`to_config`."""
        return self.to_config()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CalibrationResult:
        """Read back a saved ``model.config.policy`` that holds a ``calibration`` record."""
        info = dict(config.get("calibration") or {})
        if "rule" not in info:
            raise ValueError("this policy config holds no calibration record (run `offramp calibrate`)")
        speed = {k: info.pop(k) for k in _SPEED_KEYS if k in info}
        fixed = {k: info.pop(k, None) for k in ("split", "n", "exits", "metric", "final_score", "score")}
        return cls(policy_from_config(config), info.pop("rule"), details=info, speed=speed, **fixed)


# ---------------------------------------------------------------------------------------------------------
# Temperatures
# ---------------------------------------------------------------------------------------------------------


def fit_temperatures(logits: Any, labels: Any, max_iter: int = 100) -> list[float]:
    """One temperature per exit minimising the validation NLL of softmax(z_k / T_k) (Guo et al., 2017).

    LBFGS on log T (so T stays positive), starting at T = 1. Scaling is monotonic: predictions do not
    change, only the confidences the signals see. ``logits`` [K, N, C], ``labels`` [N] class ids.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 3 or z.shape[-1] < 2:
        raise ValueError(f"logits of shape {tuple(z.shape)}: temperature scaling needs [K, N, C] with C >= 2")
    return [_fit_temperature(z[k], y, max_iter) for k in range(z.shape[0])]


def _fit_temperature(z: torch.Tensor, y: torch.Tensor, max_iter: int) -> float:
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, 1e-2), 1e2) if math.isfinite(t) else 1.0


# ---------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Split:
    """The validation outputs as arrays (what :func:`sweep` reads), plus the task for scoring."""

    logits: np.ndarray
    labels: np.ndarray | None
    confidence: np.ndarray | None
    exits: list[int]
    costs: ExitCosts
    task: str | None

    @classmethod
    def of(cls, outputs: ExitOutputs, task: str | None, costs: ExitCosts | None) -> _Split:
        conf = outputs.confidence
        return cls(
            np.asarray(outputs.logits, dtype=np.float32),
            None if outputs.labels is None else np.asarray(outputs.labels),
            None if conf is None else np.asarray(conf, dtype=np.float32),
            [int(v) for v in outputs.exits],
            costs or outputs.costs,
            task,
        )

    @property
    def regression(self) -> bool:
        return self.logits.shape[-1] == 1

    @property
    def final_prediction(self) -> np.ndarray:
        return exit_predictions(self.logits[-1], self.regression)

    def scores(self, predictions: np.ndarray) -> tuple[str, np.ndarray]:
        """The task's primary metric for every row of ``predictions`` [T, N]."""
        assert self.labels is not None
        return primary_scores(self.task, predictions, self.labels, self.regression)

    def final_score(self) -> tuple[str, float]:
        metric, score = self.scores(self.final_prediction[None, :])
        return metric, float(score[0])


def calibrate(
    outputs: ExitOutputs,
    policy: Policy | str | dict[str, Any] = "maxprob",
    *,
    target_speedup: float | None = None,
    rule: str | None = None,
    max_drop: float | None = None,
    per_exit: bool = False,
    temperature_scaling: bool = False,
    task: str | None = None,
    compare: str = "same_inputs",
    grid_size: int = 512,
    split: str | None = None,
    costs: ExitCosts | None = None,
    unlabeled: bool = False,
    confidence: float | None = None,
    risk_test: str = "binomial",
) -> CalibrationResult:
    """Choose the policy's threshold on validation outputs.

    ``outputs``: :class:`~offramp.evaluate.ExitOutputs` of a validation split (logits, labels, exits,
    confidence); ``costs`` defaults to ``outputs.costs``. Exactly one goal:

    * ``target_speedup=X``: the slowest grid setting with layer-count speed-up >= X. With
      ``unlabeled=True`` the labels are not read (none are needed) and no score is recorded.
    * ``rule="beem"``: BEEM's rule, "minimise alpha subject to q_alpha <= p" (slides, *Threshold
      choice*). Here q_alpha is the error rate among the validation inputs that leave before the last
      exit and p the final exit's error rate *on those same inputs* (``compare="same_inputs"``, so
      early exit never hurts the inputs it touches; ``compare="overall"`` uses the final exit's error on
      the whole split instead, the slides' literal p). Among the settings that satisfy it, the fastest is
      taken (for BEEM the smallest alpha); when no setting with early exits satisfies it, the setting
      that never exits early. With ``per_exit=True`` (BEEM only) one alpha per exit is chosen greedily
      from exit 1 up: alpha_i is the smallest value such that the inputs leaving at exit i (among those
      still running) err no more often than the final exit does on them.
    * ``max_drop=D``: the fastest setting whose primary task metric is at least the final exit's
      minus D points (D = 0.5 means 0.5 percentage points).
    * ``max_drop=D, confidence=C``: the fastest grid setting whose accuracy loss against the final exit
      is at most D points with probability >= C over the draw of the validation split: Learn-then-Test
      with fixed-sequence testing from the slowest setting (:mod:`offramp.risk`; ``risk_test`` is
      ``"binomial"`` or ``"hoeffding-bentkus"``). When none is certified: the final exit (``budget``).

    BEEM-A (``weights="accuracy"``) gets its weights from the validation accuracy of each exit first
    (:meth:`Policy.fit`); ``temperature_scaling=True`` fits one temperature per exit by NLL before that.
    """
    _check_goal(target_speedup, rule, max_drop, compare)
    if confidence is not None and max_drop is None:
        raise ValueError("confidence= goes with max_drop=D: the guarantee bounds the accuracy drop")
    data = _Split.of(outputs, task, costs)
    pol = policy_from_config(policy)
    if pol.needs_confidence and data.confidence is None:
        raise PolicyError(f"policy {pol.kind!r} reads learned-exit confidences, but these outputs have none")
    if unlabeled:
        return _calibrate_unlabeled(
            data, pol, target_speedup, per_exit, temperature_scaling, grid_size, split
        )
    if data.labels is None:
        raise ValueError(
            "calibration needs a labelled validation split; these outputs have no labels "
            "(a speed-up goal can be calibrated without them: unlabeled=True)"
        )
    if confidence is not None:
        _check_guarantee(pol, data, temperature_scaling or per_exit)
        return _calibrate_guaranteed(pol, data, float(max_drop), confidence, risk_test, grid_size, split)
    pol, details = _fit_policy(pol, data, temperature_scaling)
    if per_exit and not (isinstance(pol, BEEM) and rule == "beem"):
        raise ValueError("per-exit calibration is implemented for the BEEM rule with a beem policy")
    if rule == "beem":
        _warn_unless_accuracy(data)
    if per_exit:
        assert isinstance(pol, BEEM)
        chosen = pol.with_threshold(_beem_per_exit(pol, data.logits, data.labels, compare))
        return _result(chosen, data, "beem", {**details, "compare": compare}, split)
    chosen, goal = _choose_on_grid(pol, data, target_speedup, max_drop, compare, grid_size)
    return _result(chosen, data, goal.pop("rule"), {**details, **goal}, split)


def _choose_on_grid(
    pol: Policy,
    data: _Split,
    target_speedup: float | None,
    max_drop: float | None,
    compare: str,
    grid_size: int,
) -> tuple[Policy, dict[str, Any]]:
    """Sweep the policy's grid and take the setting the goal asks for (no goal given: the BEEM rule)."""
    swept = sweep(pol, data, data.costs, None, data.task, grid_size)
    if target_speedup is not None:
        idx, goal = _speedup_goal(swept, pol, target_speedup)
    elif max_drop is not None:
        idx, goal = _accuracy_goal(swept, pol, max_drop, data.final_score()[1])
    else:
        idx, goal = _beem_goal(swept, data, compare)
    value = swept.thresholds[idx]
    chosen = pol.with_threshold(axis_value(pol, value.tolist() if np.ndim(value) else float(value)))
    return chosen, {"grid_size": int(len(swept.thresholds)), **goal}


def _check_goal(target_speedup: float | None, rule: str | None, max_drop: float | None, compare: str) -> None:
    """Exactly one valid goal, and a known ``compare``."""
    goals = [g for g in (target_speedup, rule, max_drop) if g is not None]
    if len(goals) != 1:
        raise ValueError("calibrate needs exactly one goal: target_speedup=X, rule='beem' or max_drop=D")
    if rule is not None and rule != "beem":
        raise ValueError(f"unknown rule {rule!r}; expected 'beem' (or use target_speedup / max_drop)")
    if compare not in ("same_inputs", "overall"):
        raise ValueError(f"compare={compare!r}: expected 'same_inputs' or 'overall'")
    if target_speedup is not None and not target_speedup >= 1.0:
        raise ValueError(f"target speed-up {target_speedup!r}: expected a ratio >= 1.0 (e.g. 2.0)")
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        raise ValueError(f"max drop {max_drop!r}: expected points >= 0 (0.5 = half a point)")


def _fit_policy(pol: Policy, data: _Split, temperature_scaling: bool) -> tuple[Policy, dict[str, Any]]:
    """Temperatures (when asked) and whatever the policy learns from labels (BEEM-A's weights)."""
    details: dict[str, Any] = {}
    if temperature_scaling:
        if data.regression:
            raise ValueError("temperature scaling needs class probabilities; this is a regression model")
        pol = dataclasses.replace(pol, temperatures=fit_temperatures(data.logits, data.labels))
    if isinstance(pol, BEEM) and pol.weights == "accuracy":
        details["weights_from"] = "validation accuracy of each exit (BEEM-A)"
    return pol.fit(data.logits, data.labels), details


def _calibrate_unlabeled(
    data: _Split,
    pol: Policy,
    target_speedup: float | None,
    per_exit: bool,
    temperature_scaling: bool,
    grid_size: int,
    split: str | None,
) -> CalibrationResult:
    """The speed-up goal on outputs whose labels are not read: only where inputs exit matters."""
    if target_speedup is None:
        raise ValueError(
            "without labels only a speed-up goal can be calibrated (target_speedup=X); the BEEM rule and "
            "max_drop compare errors and scores, which need labels"
        )
    if temperature_scaling or per_exit:
        raise ValueError(
            "temperature scaling and per-exit calibration fit to labels; unlabeled=True has none"
        )
    if isinstance(pol, BEEM) and pol.weights == "accuracy":
        raise ValueError(
            "policy beem-a takes its weights from each exit's validation accuracy, which needs labels; "
            "use beem (BEEM-C) or a labelled split"
        )
    chosen, _ = threshold_for_speedup(
        pol, data.logits, data.costs, float(target_speedup), data.confidence, grid_size
    )
    unlabelled = _Split(data.logits, None, data.confidence, data.exits, data.costs, data.task)
    details = {"target_speedup": float(target_speedup), "unlabeled": True}
    return _result(chosen, unlabelled, "speedup", details, split)


def _speedup_goal(swept: SweepResult, pol: Policy, target: float) -> tuple[int, dict[str, Any]]:
    """The slowest setting at or above the target speed-up (the best score among equals)."""
    idx = index_for_speedup(swept.speedup, target, pol, "this split", swept.score)
    return idx, {"rule": "speedup", "target_speedup": float(target)}


def _accuracy_goal(
    swept: SweepResult, pol: Policy, max_drop: float, final_score: float
) -> tuple[int, dict[str, Any]]:
    """The fastest setting whose score is within ``max_drop`` points of the final exit's."""
    ok = swept.score >= final_score - max_drop / 100.0 - 1e-12
    if not ok.any():
        raise ValueError(
            f"no setting of policy {pol.kind!r} stays within {max_drop:g} points of the final exit"
        )
    return pick_index(ok, swept.speedup, swept.score), {"rule": "accuracy", "max_drop": float(max_drop)}


def check_guarantee_goal(max_drop: float, confidence: float, method: str = "binomial") -> tuple[float, str]:
    """A guaranteed goal's values, checked: ``max_drop`` points in (0, 100), ``confidence`` in (0, 1)."""
    if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and 0 < max_drop < 100):
        raise ValueError(
            f"max drop {max_drop!r} with a confidence: expected points strictly between 0 and 100 "
            "(1.0 = one accuracy point)"
        )
    return check_level("confidence", confidence), check_method(method)


def _check_guarantee(pol: Policy, data: _Split, fits_to_labels: bool) -> None:
    """What Learn-then-Test cannot certify: thresholds of a family that was itself fitted to the labels."""
    if data.regression:
        raise ValueError("a guaranteed max drop bounds an accuracy loss; this is a regression model")
    if fits_to_labels:
        raise ValueError(
            "temperature scaling and per-exit calibration fit to the calibration labels, which the "
            "guarantee (confidence=) needs untouched; fit them on another split"
        )
    if isinstance(pol, BEEM) and pol.weights == "accuracy":
        raise ValueError(
            "policy beem-a fits its weights to the calibration labels, which the guarantee (confidence=) "
            "needs untouched; pass the weights as a list or use beem (BEEM-C)"
        )


def _calibrate_guaranteed(
    pol: Policy,
    data: _Split,
    max_drop: float,
    confidence: float,
    method: str,
    grid_size: int,
    split: str | None,
) -> CalibrationResult:
    """Learn-then-Test over the policy's grid (see :mod:`offramp.risk`); the final exit if none passes.

    Records ``max_drop``, ``confidence``, ``method``, ``risk``, ``tested``, ``certified`` and, for a
    certified setting, its ``p_value`` and, in accuracy points on this split, ``empirical_risk``,
    ``risk_bound`` (that setting's own upper confidence bound) and ``empirical_drop``.
    """
    level, method = check_guarantee_goal(max_drop, confidence, method)
    assert data.labels is not None
    swept = sweep(pol, data, data.costs, None, data.task, grid_size)
    losses = harm(swept.prediction, data.final_prediction, data.labels).sum(1)
    n = len(data.labels)
    control = learn_then_test(losses, n, swept.speedup, max_drop / 100.0, level, method)
    details: dict[str, Any] = {
        "max_drop": max_drop,
        "confidence": level,
        "method": f"learn-then-test, fixed sequence from the slowest setting, {method} p-values",
        "risk": RISK,
        "grid_size": int(len(swept.thresholds)),
        "tested": control.tested,
        "certified": control.index is not None,
    }
    idx = control.index
    if idx is None:
        details["fallback"] = f"final exit: no setting of policy {pol.kind!r} was certified"
        chosen = get_policy("budget", k=len(data.exits))
        return _result(chosen, data, "risk", details, split)
    value = swept.thresholds[idx]
    chosen = pol.with_threshold(axis_value(pol, value.tolist() if np.ndim(value) else float(value)))
    correct = swept.prediction[idx] == data.labels
    details.update(
        empirical_risk=100.0 * control.risk(idx),
        risk_bound=100.0 * control.bound(idx),
        p_value=control.p_value(idx),
        empirical_drop=100.0 * float((data.final_prediction == data.labels).mean() - correct.mean()),
    )
    return _result(chosen, data, "risk", details, split)


def _errors(prediction: np.ndarray, labels: np.ndarray, regression: bool) -> np.ndarray:
    """Per-input error: 0/1 misclassification, or squared error for regression."""
    if regression:
        return (prediction.astype(np.float64) - labels.astype(np.float64)) ** 2
    return (prediction != labels).astype(np.float64)


def _beem_goal(swept: SweepResult, data: _Split, compare: str) -> tuple[int, dict[str, Any]]:
    """The fastest grid setting whose early-exit error is no higher than the final exit's (see calibrate)."""
    assert data.labels is not None
    early = swept.exit_slot < len(data.exits) - 1
    n_early = early.sum(1)
    denom = np.maximum(n_early, 1)
    err_early = (_errors(swept.prediction, data.labels, data.regression) * early).sum(1) / denom
    final_err = _errors(data.final_prediction, data.labels, data.regression)
    if compare == "same_inputs":
        ref = (final_err[None, :] * early).sum(1) / denom
    else:
        ref = np.full(len(early), final_err.mean())
    ok = (n_early > 0) & (err_early <= ref + 1e-12)
    if ok.any():
        idx = pick_index(ok, swept.speedup, swept.score)
    else:  # nothing early is safe: the setting with the fewest early exits (ideally none)
        idx = pick_index(n_early == n_early.min(), -swept.speedup, swept.score)
    return idx, {
        "rule": "beem",
        "compare": compare,
        "early_exits": int(n_early[idx]),
        "early_error": float(err_early[idx]),
        "final_error_on_reference": float(ref[idx]),
    }


def _warn_unless_accuracy(data: _Split) -> None:
    """The BEEM rule compares error rates; say so when the task is scored by something else."""
    metric, _ = data.final_score()
    if metric != "accuracy":
        errors = "squared errors" if data.regression else "error rates (misclassifications)"
        warnings.warn(
            f"the BEEM rule compares {errors}, but this task is scored by {metric}: the chosen threshold "
            f"keeps the early exits' errors no higher than the final exit's, not their {metric}",
            stacklevel=3,
        )


def _beem_per_exit(pol: BEEM, logits: np.ndarray, labels: np.ndarray, compare: str) -> list[float]:
    """Greedy per-exit alphas (see :func:`calibrate`): exit 1 first, each on the inputs still running."""
    num_exits, n = logits.shape[:2]
    scores, preds = _beem_scores(pol, logits)
    wrong = preds != labels[None, :]
    final_wrong = exit_predictions(logits[-1], False) != labels
    running = np.ones(n, dtype=bool)
    never = float(sum(pol.weight(k) for k in range(num_exits)) + 1.0)  # above any reachable S
    alphas = []
    for k in range(num_exits - 1):
        idx = np.flatnonzero(running)
        alpha, leaving = _alpha_for_exit(scores[k][idx], wrong[k, idx], final_wrong, idx, compare)
        alphas.append(never if alpha is None else alpha)
        running[idx[leaving]] = False
    alphas.append(0.0)  # the last exit always exits; its alpha is never read
    return alphas


def _beem_scores(pol: BEEM, logits: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """S_k and the prediction an exit would give, [K][N] and [K, N], from the policy's own steps."""
    num_exits, n = logits.shape[:2]
    state = pol.init_state(n, num_exits, thresholds=0.0)
    scores, preds = [], []
    with torch.no_grad():
        for k in range(num_exits):
            state, _, pred = pol.step(state, k, ExitOutput(torch.as_tensor(logits[k])))
            scores.append(state.values["score"][0].double().numpy())
            preds.append(pred[0].numpy())
    return scores, np.stack(preds)


def _alpha_for_exit(
    s: np.ndarray, wrong: np.ndarray, final_wrong: np.ndarray, idx: np.ndarray, compare: str
) -> tuple[float | None, np.ndarray]:
    """The smallest alpha at one exit whose leavers err no more than the final exit (None: no alpha).

    ``s`` / ``wrong``: the scores and errors of the running inputs ``idx``; returns the alpha and the
    positions (into ``idx``) of the inputs that leave with it.
    """
    if idx.size == 0:
        return None, np.zeros(0, dtype=np.int64)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    cum_err = np.cumsum(wrong[order])
    if compare == "same_inputs":
        cum_ref = np.cumsum(final_wrong[idx][order])
    else:
        cum_ref = final_wrong.mean() * np.arange(1, idx.size + 1)
    # a prefix may only end where the next score is strictly smaller (ties leave together)
    ends = np.flatnonzero(np.append(s_sorted[1:] < s_sorted[:-1], True))
    ok = ends[cum_err[ends] <= cum_ref[ends] + 1e-12]
    if ok.size == 0:
        return None, np.zeros(0, dtype=np.int64)
    last = int(ok.max())
    alpha = s_sorted[last] if last + 1 >= idx.size else (s_sorted[last] + s_sorted[last + 1]) / 2
    return float(alpha), order[: last + 1]


def _result(
    policy: Policy, data: _Split, rule: str, details: dict[str, Any], split: str | None
) -> CalibrationResult:
    """Measure the chosen ``policy`` on the split it was calibrated on."""
    sim = simulate(policy, data.logits, None, data.confidence, regression=data.regression)
    result = CalibrationResult(
        policy, rule, split, int(data.logits.shape[1]), list(data.exits), data.costs.summary(sim.exit_slot[0])
    )
    result.details = details
    if data.labels is not None:
        result.metric, result.final_score = data.final_score()
        result.score = float(data.scores(sim.prediction)[1][0])
    return result


# ---------------------------------------------------------------------------------------------------------
# A model: collect, check, calibrate, save
# ---------------------------------------------------------------------------------------------------------


def calibrate_model(
    model: ExitModel, data: TextDataset, batch_size: int = 64, progress: bool = False, **kwargs: Any
) -> CalibrationResult:
    """Check ``data`` against ``model``, collect its per-exit outputs, calibrate, set ``model.config.policy``.

    ``data``: a :class:`~offramp.data.TextDataset` (labels may be absent with ``unlabeled=True``); a label
    set, kind or task that does not fit the model is refused before anything runs. ``kwargs`` go to
    :func:`calibrate`; ``task`` defaults to the data's or the model's.
    """
    from .checks import check_data_matches
    from .evaluate import collect_exit_outputs

    check_data_matches(model, data, need_labels=not kwargs.get("unlabeled", False))
    outputs = collect_exit_outputs(model, data, batch_size, progress=progress)
    kwargs.setdefault("task", getattr(data, "task", None) or getattr(model.config, "task", None))
    result = calibrate(outputs, **kwargs)
    model.config.policy = result.to_config()
    return result


def config_file(model_dir: str | os.PathLike[str]) -> Path:
    """The JSON file of a model folder that holds its policy: ``cascade.json`` or ``offramp.json``."""
    from .cascade import CascadeConfig
    from .model import ExitConfig

    for config_class in (CascadeConfig, ExitConfig):  # the order load_any tries them
        path = Path(model_dir) / config_class.FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{str(Path(model_dir) / ExitConfig.FILE)!r} not found; expected a model folder written by "
        "`offramp train`"
    )


def save_policy(
    model_dir: str | os.PathLike[str], policy: CalibrationResult | dict[str, Any], runtime: str | None = None
) -> Path:
    """Write ``policy`` into the folder's config file (see :func:`config_file`) atomically; the weights
    are untouched. ``runtime`` (e.g. ``"int8"``): the policy was calibrated on that runtime's outputs and
    is saved under ``runtime_policies[runtime]``, leaving the fp32 ``policy`` as it was."""
    path = config_file(model_dir)
    config = json.loads(path.read_text(encoding="utf-8"))
    saved = policy.to_config() if isinstance(policy, CalibrationResult) else policy
    if runtime is None:
        config["policy"] = saved
    else:
        config.setdefault("runtime_policies", {})[runtime] = saved
    return write_json_atomic(path, config)
