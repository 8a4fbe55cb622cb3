"""The speed knob: the server's default exit policy, per-request overrides, and label-free speed control.

Label-free control, and why it is built this way. A layer-count speed-up depends only on where inputs
exit, and that depends only on the exits' outputs, so a threshold for a target speed-up can be picked
on unlabelled traffic by replaying the policy over recent inputs' per-exit outputs
(:func:`offramp.simulate.threshold_for_speedup`, the same ``policy.step`` code the runtime runs). But
under early exit a live input only has outputs up to its own exit: a window of live rows is censored
exactly where a slower threshold would need to look. So one input in ``shadow_every`` (a deterministic
counter, default 1 in 16) runs *every* exit — a shadow row. It is still answered as the policy would
answer it live, but it costs the full model. Those rows are an unbiased sample of traffic; the last
``window`` of them (default 256) form the window, and every ``repick_every`` inputs (default 64) the
threshold is re-picked on it.

The shadow cost is counted, not hidden: ``layers_run`` of a shadow row is the full model, and by default
(``count_shadow``) the controller aims the policy at a higher exit speed-up T' so the *compute* speed-up,
shadow rows included, lands on the target T. With a share s of rows at full cost F and depth L, the
live rows must average c = (L/T - s·F)/(1 - s) layers, i.e. T' = L/c (T = 2, s = 1/16, L = F = 6:
T' = 2.14). At start, with an empty window, the first ``window`` inputs all run every exit (warm-up),
so control starts after one window; ``--warmup FILE`` seeds the window from unlabelled texts instead.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..policies import Policy, PolicyError, get_policy, policy_from_config
from ..simulate import threshold_for_speedup
from .config import ControlConfig
from .runner import BatchOutput, ModelRunner, ShadowOutputs


class KnobError(ValueError):
    """A request asked the knob for something it cannot give now (HTTP ``status``, default 400)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class KnobState:
    """What ``GET /v2/models/{name}/policy`` shows: the default policy and the controller's state."""

    policy: dict[str, Any]
    threshold: Any
    target_speedup: float | None
    policy_target: float | None
    sampling: bool
    shadow_every: int
    window_rows: int
    min_window: int
    window_speedup: float | None
    repicks: int
    inputs: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SignalWindow:
    """A ring buffer of every exit's outputs for the most recent shadow rows ([K, size, C])."""

    def __init__(self, size: int, num_exits: int, num_classes: int, learned: bool):
        self.size = size
        self._logits = np.zeros((num_exits, size, num_classes), dtype=np.float32)
        self._conf = np.zeros((num_exits, size), dtype=np.float32) if learned else None
        self._count = 0
        self.version = 0

    def __len__(self) -> int:
        return min(self._count, self.size)

    def add(self, outputs: ShadowOutputs) -> None:
        n = outputs.logits.shape[1]
        for start in range(0, n, self.size):  # more rows than the window: only the last ones stay
            chunk = slice(start, min(n, start + self.size))
            m = chunk.stop - chunk.start
            idx = (self._count + np.arange(m)) % self.size
            self._logits[:, idx] = outputs.logits[:, chunk]
            if self._conf is not None and outputs.confidence is not None:
                self._conf[:, idx] = outputs.confidence[:, chunk]
            self._count += m
        self.version += 1

    def outputs(self) -> ShadowOutputs:
        n = len(self)
        return ShadowOutputs(
            self._logits[:, :n].copy(), None if self._conf is None else self._conf[:, :n].copy()
        )


def policy_key(policy: Policy) -> str:
    """A stable key for grouping rows that run under the same policy."""
    return json.dumps(policy.to_config(), sort_keys=True, default=str)


class SpeedKnob:
    """The default policy, per-request policy resolution, and the label-free controller.

    ``resolve`` runs on the event loop for each request; ``shadow_mask`` and ``observe`` run in the
    model thread around each batch; one lock keeps them consistent.
    """

    def __init__(self, runner: ModelRunner, default: Policy, control: ControlConfig, sample: bool = False):
        self.runner = runner
        self.config = control
        self._default = runner.check_policy(default)
        self._target = control.target_speedup
        self._sample = sample
        self._lock = threading.Lock()
        self.window = SignalWindow(control.window, runner.num_exits, runner.num_labels, runner.learned)
        self._inputs = 0
        self._since_pick = 0
        self._picked_version = -1
        self._repicks = 0
        self._policy_target: float | None = None
        self._cache: dict[tuple[str, float, int], Policy] = {}
        if self._target is not None:
            self._policy_target = self._aim(self._target)

    # -- the default policy ---------------------------------------------------------------------------
    @property
    def default(self) -> Policy:
        return self._default

    @property
    def target(self) -> float | None:
        return self._target

    def set_policy(self, policy: Policy) -> KnobState:
        """A fixed default policy (turns label-free control off)."""
        checked = self.runner.check_policy(policy)
        with self._lock:
            self._default, self._target, self._policy_target = checked, None, None
        return self.state()

    def set_target(self, target: float | None, policy: Policy | None = None) -> KnobState:
        """Hold ``target`` on live traffic (None: stop); ``policy`` picks the kind whose threshold moves."""
        aim = None if target is None else self._aim(target)
        checked = None if policy is None else self.runner.check_policy(policy)
        with self._lock:
            if checked is not None:
                self._default = checked
            self._target, self._policy_target = target, aim
            self._picked_version, self._since_pick = -1, 0
            self._maybe_repick()
        return self.state()

    def _aim(self, target: float) -> float:
        """The exit speed-up the policy must reach so compute, shadow rows included, hits ``target``."""
        if not (isinstance(target, (int, float)) and np.isfinite(target) and target >= 1.0):
            raise KnobError(f"target speed-up {target!r}: expected a ratio >= 1.0 (e.g. 2.0)")
        every = self.config.shadow_every
        if not self.config.count_shadow or not every:
            return float(target)
        s, depth, full = 1.0 / every, self.runner.costs.depth, self.runner.full_cost
        budget = depth / target - s * full
        if budget <= 0:
            raise KnobError(
                f"target speed-up {target:g}x is out of reach with one input in {every} running the full "
                f"model for control; raise shadow_every above {target * full / depth:g}"
            )
        return float(depth / (budget / (1 - s)))

    # -- per request ----------------------------------------------------------------------------------
    def resolve(self, params: dict[str, Any]) -> Policy:
        """The policy for one request's ``parameters`` (policy / threshold / params / speedup)."""
        try:
            return self._resolve(params)
        except (TypeError, ArithmeticError) as exc:  # e.g. a number too large for a float
            raise KnobError(f"parameters: {exc}") from None

    def _resolve(self, params: dict[str, Any]) -> Policy:
        if not any(params.get(k) is not None for k in ("policy", "params", "threshold", "speedup")):
            return self._default  # checked when it was set
        policy = self._requested_policy(params)
        if params.get("speedup") is not None:
            if params.get("threshold") is not None:
                raise KnobError("parameters: give 'threshold' or 'speedup', not both")
            return self._for_speedup(policy, params["speedup"])
        if params.get("threshold") is not None:
            policy = _with_threshold(policy, params["threshold"])
        return self.runner.check_policy(policy)

    def _requested_policy(self, params: dict[str, Any]) -> Policy:
        spec, extra = params.get("policy"), params.get("params")
        if extra is not None and not isinstance(extra, dict):
            raise KnobError(f"parameters.params {extra!r}: expected an object of policy parameters")
        if spec is None:
            if extra:
                raise KnobError(
                    "parameters.params needs parameters.policy (the parameters belong to a policy)"
                )
            return self._default
        if isinstance(spec, str) and spec.lstrip().startswith("{"):
            try:
                spec = json.loads(spec)
            except ValueError:
                raise KnobError(f"parameters.policy {spec!r}: not valid JSON") from None
        if isinstance(spec, str):
            return get_policy(spec, **(extra or {}))
        if isinstance(spec, dict):
            if extra:
                raise KnobError("parameters.params cannot be combined with a policy config object")
            return policy_from_config(spec)
        raise KnobError(f"parameters.policy {spec!r}: expected a policy name or {{'name', 'params'}}")

    def _for_speedup(self, policy: Policy, target: Any) -> Policy:
        if not (isinstance(target, (int, float)) and not isinstance(target, bool)):
            raise KnobError(f"parameters.speedup {target!r}: expected a number >= 1.0, e.g. 2.0")
        if not (np.isfinite(target) and target >= 1.0):
            raise KnobError(f"parameters.speedup {target!r}: expected a number >= 1.0, e.g. 2.0")
        with self._lock:
            n, version = len(self.window), self.window.version
            if n < self.config.min_window:
                raise KnobError(
                    f"parameters.speedup needs a window of recent inputs' exit signals, which holds {n} of "
                    f"{self.config.min_window}; start the server with --target-speedup, --shadow-every or "
                    "--warmup, or give a policy threshold instead",
                    status=409,
                )
            key = (policy_key(policy), float(target), version)
            if key not in self._cache:
                outputs = self.window.outputs()
                self._cache = {key: self._pick(policy, outputs, float(target))}
            return self._cache[key]

    def _pick(self, policy: Policy, outputs: ShadowOutputs, target: float) -> Policy:
        picked, _ = threshold_for_speedup(
            policy, outputs.logits, self.runner.costs, target, outputs.confidence, self.config.grid_size
        )
        return self.runner.check_policy(picked)

    # -- around each batch (model thread) ------------------------------------------------------------
    @property
    def sampling(self) -> bool:
        return bool(self.config.shadow_every) and (self._sample or self._target is not None)

    def shadow_mask(self, n: int) -> np.ndarray:
        """Which of the next ``n`` inputs run every exit: all while warming up, else 1 in shadow_every."""
        with self._lock:
            if not self.sampling:
                return np.zeros(n, dtype=bool)
            warming = self._target is not None and self.config.warmup and len(self.window) < self.window.size
            if warming:
                return np.ones(n, dtype=bool)
            every = self.config.shadow_every
            return (self._inputs + np.arange(n)) % every == every - 1  # not the very first input

    def observe(self, output: BatchOutput) -> None:
        """Count served inputs, add shadow rows to the window, and re-pick the threshold when due."""
        with self._lock:
            n = len(output.result)
            self._inputs += n
            self._since_pick += n
            if output.shadow_outputs is not None:
                self.window.add(output.shadow_outputs)
            self._maybe_repick()

    def seed(self, outputs: ShadowOutputs) -> None:
        """Fill the window from unlabelled texts run through every exit (``--warmup FILE``)."""
        with self._lock:
            self.window.add(outputs)
            self._maybe_repick()

    def _maybe_repick(self) -> None:
        if self._target is None or self._policy_target is None:
            return
        n = len(self.window)
        warming = self.config.warmup and n < self.window.size and self._picked_version < 0
        if n < self.config.min_window or warming or self.window.version == self._picked_version:
            return
        if self._picked_version >= 0 and self._since_pick < self.config.repick_every:
            return
        try:
            self._default = self._pick(self._default, self.window.outputs(), self._policy_target)
        except PolicyError:  # out of reach on this window: take the fastest setting there is
            self._default = self._pick(self._default, self.window.outputs(), 1.0)
        self._picked_version, self._since_pick = self.window.version, 0
        self._repicks += 1

    # -- reporting ------------------------------------------------------------------------------------
    def state(self) -> KnobState:
        with self._lock:
            window_speedup = None
            if len(self.window):
                window_speedup = self._window_speedup()
            return KnobState(
                policy=self._default.to_config(),
                threshold=self._default.threshold,
                target_speedup=self._target,
                policy_target=self._policy_target,
                sampling=self.sampling,
                shadow_every=self.config.shadow_every,
                window_rows=len(self.window),
                min_window=self.config.min_window,
                window_speedup=window_speedup,
                repicks=self._repicks,
                inputs=self._inputs,
            )

    def _window_speedup(self) -> float | None:
        from ..simulate import simulate

        outputs = self.window.outputs()
        try:
            sim = simulate(self._default, outputs.logits, None, outputs.confidence)
        except PolicyError:
            return None
        return float(self.runner.costs.speedup(sim.exit_slot[0]))


def _with_threshold(policy: Policy, value: Any) -> Policy:
    if isinstance(value, bool) or not isinstance(value, (int, float, list)):
        raise KnobError(f"parameters.threshold {value!r}: expected a number, or a list with one per exit")
    return policy.with_threshold(value)
