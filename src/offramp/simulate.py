"""Offline early exit: replay a policy over cached per-exit outputs, for a whole threshold grid at once.

:func:`simulate` drives the same ``Policy.step`` as the live runtime (:mod:`offramp.engine`) and COSEE's
training-time exit simulation, so a simulated sweep and live inference take identical exits and
predictions (``tests/test_engine.py`` holds them to it). :func:`sweep` adds the cost and score of every
grid setting (calibration and reports read it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .metrics import ExitCosts, primary_scores, speedup_ratio
from .policies import ExitOutput, Policy, PolicyError, policy_from_config

Tensor = torch.Tensor


@dataclass
class SimResult:
    """Where each input leaves and what it predicts, for every threshold of the grid.

    ``exit_slot`` [T, N] 0-based exit index; ``prediction`` [T, N] class id (or value for regression);
    ``probs`` [T, N, C] the probabilities behind the prediction (only with ``return_probs=True``);
    ``thresholds`` [T, K] the grid as the policy saw it. Arrays are numpy when the logits were numpy,
    torch tensors (on the logits' device) when they were tensors.
    """

    exit_slot: Any
    prediction: Any
    thresholds: Any
    probs: Any = None

    def exit_layers(self, exits: Sequence[int]) -> Any:
        """The 1-based layer of each input's exit, [T, N]."""
        layers = np.asarray(exits)
        if isinstance(self.exit_slot, torch.Tensor):
            return torch.as_tensor(layers, device=self.exit_slot.device)[self.exit_slot]
        return layers[self.exit_slot]


def _resolve(policy: Policy | str | dict[str, Any]) -> Policy:
    return policy_from_config(policy) if not isinstance(policy, Policy) else policy


def simulate(
    policy: Policy | str | dict[str, Any],
    logits: Any,
    thresholds: Any = None,
    confidence: Any = None,
    return_probs: bool = False,
    regression: bool | None = None,
) -> SimResult:
    """Run ``policy`` over cached per-exit logits [K, N, C] for every threshold of ``thresholds``.

    ``thresholds``: None (the policy's own value), a scalar, a grid [T], or [T, K] per-exit values.
    ``confidence``: learned-exit logits [K, N] when the policy reads them. ``regression`` defaults to
    ``C == 1``. No gradients flow (the result holds integers and detached values).
    """
    policy = _resolve(policy)
    as_numpy = not isinstance(logits, torch.Tensor)
    z = torch.as_tensor(logits).detach()
    if z.ndim != 3:
        raise PolicyError(f"logits of shape {tuple(z.shape)}: expected [K exits, N samples, C classes]")
    num_exits, num_samples, num_classes = z.shape
    conf = None if confidence is None else torch.as_tensor(confidence).detach().to(z.device)
    if policy.needs_confidence and conf is None:
        raise PolicyError(
            f"policy {policy.kind!r} with signal 'learned' needs the learned-exit confidences [K, N] "
            "(a model trained with learned_exit=True)"
        )
    regression = num_classes == 1 if regression is None else regression
    with torch.no_grad():
        state = policy.init_state(num_samples, num_exits, thresholds, regression, device=z.device)
        shape = (state.num_thresholds, num_samples)
        done = torch.zeros(shape, dtype=torch.bool, device=z.device)
        # first[t, n]: how many evaluated exits the input passed without leaving = position of its exit
        first = torch.zeros(shape, dtype=torch.uint8 if num_exits < 255 else torch.int32, device=z.device)
        slots: list[int] = []
        predictions: list[Tensor] = []
        probabilities: list[Tensor] = []
        for k in range(num_exits):
            if not policy.needs_output(state, k):
                continue
            state, exit_now, pred = policy.step(state, k, ExitOutput(z[k], None if conf is None else conf[k]))
            slots.append(k)
            predictions.append(pred)
            if return_probs and not regression:
                probabilities.append(state.values["probs"][0])
            done |= exit_now
            if bool(done.all()):  # the last exit always exits, so this ends the loop at the latest there
                break
            first += ~done
        first = first.long()
        if slots == list(range(len(slots))):
            exit_slot = first
        else:
            exit_slot = torch.as_tensor(slots, device=z.device)[first]
        prediction = _pick_per_input(predictions, first)
        probs = None
        if probabilities:
            index = first.unsqueeze(-1).expand(*shape, num_classes)
            probs = torch.stack(probabilities).gather(0, index)  # [E, N, C] -> [T, N, C]
    result = SimResult(exit_slot, prediction, state.thresholds, probs)
    if as_numpy:
        result = SimResult(
            *(
                None if v is None else v.cpu().numpy()
                for v in (exit_slot, prediction, state.thresholds, probs)
            )
        )
    return result


def _pick_per_input(values: list[Tensor], first: Tensor) -> Tensor:
    """``values[first[t, n]][t, n]``; cheap when every value is the same for all thresholds."""
    if all(v.shape[0] == 1 or v.stride(0) == 0 for v in values):
        return torch.stack([v[0] for v in values]).gather(0, first)  # [E, N] -> [T, N]
    full = torch.stack([v.expand(first.shape) for v in values])
    return full.gather(0, first.unsqueeze(0))[0]


@dataclass
class SweepResult:
    """Every setting of a policy's grid on one set of exit outputs.

    ``thresholds`` [T] or [T, K]; ``exit_slot`` / ``prediction`` [T, N]; ``layers`` [T, N] the layers each
    input cost; ``speedup`` [T] (COSEE eq. 12, L·N/Σl); ``score`` [T] the task's primary ``metric``.
    """

    thresholds: np.ndarray
    exit_slot: np.ndarray
    prediction: np.ndarray
    layers: np.ndarray
    speedup: np.ndarray
    score: np.ndarray
    metric: str


def sweep(
    policy: Policy,
    outputs: Any,
    costs: ExitCosts | None = None,
    thresholds: Any = None,
    task: str | None = None,
    grid_size: int = 256,
) -> SweepResult:
    """Simulate ``policy`` over a grid (default: ``policy.grid``) of ``outputs`` and measure every setting.

    ``outputs``: anything with ``logits`` [K, N, C], ``labels`` [N], ``exits`` and ``confidence``
    (:class:`~offramp.evaluate.ExitOutputs`); ``costs`` defaults to ``outputs.costs``.
    """
    logits = np.asarray(outputs.logits, dtype=np.float32)
    confidence = None if outputs.confidence is None else np.asarray(outputs.confidence, dtype=np.float32)
    costs = costs or outputs.costs
    regression = logits.shape[-1] == 1
    if thresholds is None:
        conf = None if confidence is None else torch.as_tensor(confidence)
        thresholds = policy.grid(torch.as_tensor(logits), conf, grid_size)
    sim = simulate(policy, logits, thresholds, confidence, regression=regression)
    layers = costs.layers(sim.exit_slot)
    speedup = np.atleast_1d(speedup_ratio(layers, costs.depth))
    metric, score = primary_scores(task, sim.prediction, np.asarray(outputs.labels), regression)
    grid = np.asarray(thresholds, dtype=np.float64)
    return SweepResult(grid, sim.exit_slot, sim.prediction, layers, speedup, score, metric)


def pick_index(ok: np.ndarray, primary: np.ndarray, score: np.ndarray) -> int:
    """Index maximising ``primary`` then ``score`` among the ``ok`` rows (NaN scores rank lowest)."""
    candidates = np.flatnonzero(ok)
    tie = np.nan_to_num(np.asarray(score, dtype=np.float64)[candidates], nan=-np.inf)
    order = np.lexsort((tie, primary[candidates]))
    return int(candidates[order[-1]])


def index_for_speedup(
    speedup: np.ndarray, target: float, policy: Policy, where: str, score: np.ndarray | None = None
) -> int:
    """The slowest grid setting whose speed-up is >= ``target`` (the best ``score`` among equals).

    The one rule behind calibration's speed-up goal and label-free control; :class:`PolicyError` names
    the fastest setting there is when none reaches the target.
    """
    ok = speedup >= target - 1e-9
    if not ok.any():
        raise PolicyError(
            f"target speed-up {target:g}x is out of reach for policy {policy.kind!r} on {where}: its "
            f"fastest setting gives {speedup.max():.2f}x"
        )
    return pick_index(ok, -speedup, np.zeros_like(speedup) if score is None else score)


def threshold_for_speedup(
    policy: Policy,
    logits: Any,
    costs: ExitCosts,
    target: float,
    confidence: Any = None,
    grid_size: int = 256,
) -> tuple[Policy, float]:
    """The slowest setting of ``policy`` whose layer-count speed-up on these outputs is >= ``target``.

    Needs no labels: where inputs exit depends only on the exits' outputs, so this works on unlabelled
    traffic (label-free speed control) as well as on a validation split. Returns the policy with that
    threshold and the speed-up it gives here; raises :class:`PolicyError` when no setting reaches it.
    """
    if not (isinstance(target, (int, float)) and np.isfinite(target) and target >= 1.0):
        raise PolicyError(f"target speed-up {target!r}: expected a ratio >= 1.0 (e.g. 2.0)")
    z = np.asarray(logits, dtype=np.float32)
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float32)
    grid = policy.grid(torch.as_tensor(z), None if conf is None else torch.as_tensor(conf), grid_size)
    sim = simulate(policy, z, grid, conf, regression=z.shape[-1] == 1)
    speed = np.atleast_1d(speedup_ratio(costs.layers(sim.exit_slot), costs.depth))
    idx = index_for_speedup(speed, target, policy, "these inputs")
    chosen = np.asarray(grid)[idx]
    value = chosen.tolist() if np.ndim(chosen) else float(chosen)
    return policy.with_threshold(axis_value(policy, value)), float(speed[idx])


def axis_value(policy: Policy, value: Any) -> Any:
    """A grid value as the policy's threshold axis takes it (integers for budget / patience)."""
    if isinstance(value, list):
        return value
    return int(round(value)) if policy.integer_axis else float(value)
