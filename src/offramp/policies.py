"""Exit policies: one vectorised step function each, shared by simulation, live inference and training.

A policy decides, exit by exit, which inputs leave. It is written once, batched over samples *and*
over a grid of T thresholds::

    state = policy.init_state(num_samples, num_exits, thresholds)    # thresholds: [T] or [T, K]
    for k in range(num_exits):                                       # 0-based exit index
        state, exit_now, prediction = policy.step(state, k, ExitOutput(logits_k, confidence_k))
        # exit_now: bool [T, N]; prediction: [T, N] (class id, or the value for regression)

The same code drives :func:`offramp.simulate.simulate` (cached logits, every threshold at once), the live
:class:`offramp.engine.EarlyExitEngine` (T = 1, only the rows still running are passed in; the state
follows them through :meth:`PolicyState.select`) and COSEE's training-time exit simulation. The last
exit always exits.

Every policy has one *threshold axis*, the parameter a grid sweeps: ``tau`` for ``threshold`` and
``pcee``, ``alpha`` for ``beem``, ``t`` for ``patience``, ``k`` for ``budget``. Inside ``init_state``
thresholds become a [T, K] tensor (one value per exit; a scalar grid [T] is repeated over exits).
Policies that allow a different value per exit (``threshold``, ``beem``) accept [T, K] grids, and a
list of K values as their own parameter.

Options every policy has: ``ensemble`` (PCEE §4.6.3 cross-layer ensemble: the prediction is the
average of the probabilities of all exits passed, or of the values for regression; the exit *decision*
still uses each exit's own output), and ``temperatures`` (one per exit, dividing the logits before
anything else; fitted by :func:`offramp.calibrate.fit_temperatures`).

Adding a policy is one class (a dataclass with an ``update`` method) plus one ``register_policy`` line
at the bottom of this file.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .signals import SIGNALS, Signal, get_signal

Tensor = torch.Tensor


class PolicyError(ValueError):
    """A policy name, parameter or threshold that cannot be used."""


# ---------------------------------------------------------------------------------------------------------
# Inputs and state
# ---------------------------------------------------------------------------------------------------------


class ExitOutput:
    """One exit's outputs for the rows being stepped: ``logits`` [N, C], ``confidence`` [N] or None.

    ``confidence`` is the learned-exit logit (BERxiT / PCEE-v2 heads). Derived values (probabilities,
    predictions) are computed once and cached, so several uses inside a step cost nothing.
    """

    __slots__ = ("logits", "confidence", "_probs", "_prediction")

    def __init__(self, logits: torch.Tensor, confidence: torch.Tensor | None = None):
        self.logits = logits
        self.confidence = confidence
        self._probs: torch.Tensor | None = None
        self._prediction: torch.Tensor | None = None

    @property
    def probs(self) -> torch.Tensor:
        """softmax of the logits, float32 [N, C]."""
        if self._probs is None:
            self._probs = self.logits.float().softmax(-1)
        return self._probs

    def signal(self, signal: Signal) -> torch.Tensor:
        """``signal``'s values for these outputs, from the cached softmax when the signal allows it."""
        if signal.from_probs is not None:
            return signal.from_probs(self.probs)
        return signal(self.logits, self.confidence)

    @property
    def prediction(self) -> torch.Tensor:
        """argmax class [N] (int64); for regression (C = 1) the predicted value (float32)."""
        if self._prediction is None:
            if self.logits.shape[-1] == 1:
                self._prediction = self.logits[..., 0].float()
            else:
                self._prediction = self.logits.argmax(-1)
        return self._prediction


class PolicyState:
    """What a policy carries from one exit to the next.

    ``thresholds`` [T, K] (float64) is the threshold grid, one value per exit. ``values`` holds the
    policy's running tensors; each has the sample axis at dim 1 (shape [T, N, ...], or [1, N, ...]
    when it does not depend on the threshold), so :meth:`select` can follow the rows still running.
    After a step, ``values["probs"]`` [1, N, C] holds the probabilities behind the returned prediction
    (ensemble-averaged when the policy ensembles; absent for regression).
    """

    __slots__ = ("thresholds", "num_exits", "regression", "num_samples", "values", "memo")

    def __init__(
        self,
        thresholds: torch.Tensor,
        num_exits: int,
        regression: bool,
        num_samples: int,
        values: dict[str, torch.Tensor] | None = None,
    ):
        self.thresholds = thresholds
        self.num_exits = num_exits
        self.regression = regression
        self.num_samples = num_samples
        self.values: dict[str, torch.Tensor] = values if values is not None else {}
        #: Per-call facts derived from the thresholds only (shared by every row subset).
        self.memo: dict[str, Any] = {}

    @property
    def num_thresholds(self) -> int:
        return int(self.thresholds.shape[0])

    def threshold(self, exit_index: int) -> torch.Tensor:
        """The grid's values at one exit, shaped [T, 1] to broadcast against [T, N]."""
        return self.thresholds[:, exit_index : exit_index + 1]

    def fresh(self, num_samples: int) -> PolicyState:
        """An empty state for new rows with the same (already validated) thresholds."""
        state = PolicyState(self.thresholds, self.num_exits, self.regression, num_samples)
        state.memo = self.memo
        return state

    def select(self, rows: torch.Tensor) -> PolicyState:
        """The state of a subset of rows (an index tensor or a bool mask over the N rows)."""
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        values = {key: value.index_select(1, rows) for key, value in self.values.items()}
        state = PolicyState(self.thresholds, self.num_exits, self.regression, int(rows.numel()), values)
        state.memo = self.memo
        return state


# ---------------------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Policy:
    """Base class: temperature scaling, ensembling, the last-exit rule, threshold handling.

    Subclasses set the class variables and implement :meth:`update`, which returns the exit decision of
    the current exit (bool, broadcastable to [T, N]) and may update ``state.values``.
    """

    #: PCEE §4.6.3 cross-layer ensemble: predict with the mean probability over the exits passed.
    ensemble: bool = False
    #: One temperature per exit (logits are divided by it before any signal or prediction), or None.
    temperatures: list[float] | None = None

    #: Canonical registry name of the class (what ``to_config`` writes).
    kind: ClassVar[str] = ""
    #: Name of the threshold-axis parameter.
    axis: ClassVar[str] = ""
    #: Works on regression models (num_labels = 1).
    regression_ok: ClassVar[bool] = False
    #: Accepts one threshold per exit.
    per_exit_ok: ClassVar[bool] = False
    #: The threshold axis holds integers.
    integer_axis: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not isinstance(self.ensemble, bool):
            raise PolicyError(f"ensemble={self.ensemble!r}: expected true or false")
        if self.temperatures is not None:
            temps = [_number(t, "temperatures", self.kind) for t in self.temperatures]
            bad = [t for t in temps if not (math.isfinite(t) and t > 0)]
            if bad:
                raise PolicyError(f"temperatures {bad}: expected positive finite numbers, one per exit")
            self.temperatures = temps
        value = getattr(self, self.axis)
        if value is not None:
            if isinstance(value, (list, tuple)) and not self.per_exit_ok:
                raise PolicyError(
                    f"policy {self.kind!r} takes one {self.axis} for all exits, got a list {list(value)}"
                )
            try:
                value = [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)
            except (TypeError, ValueError):
                hint = self.threshold_hint()
                raise PolicyError(f"{self.axis}={value!r}: expected a number ({hint})") from None
            if isinstance(value, float) and self.integer_axis and value.is_integer():
                value = int(value)
            setattr(self, self.axis, value)
            self.check_thresholds(torch.as_tensor(value, dtype=torch.float64))

    # -- the threshold axis --------------------------------------------------------------------------
    @property
    def threshold(self) -> float | int | list[float] | None:
        """The policy's own value on its threshold axis (None when only a grid will be given)."""
        return getattr(self, self.axis)

    def fit(self, logits: Any, labels: Any) -> Policy:
        """The policy with whatever it learns from labelled validation outputs filled in (a hook).

        ``logits`` [K, N, C], ``labels`` [N]. The base policy learns nothing and returns itself; BEEM-A
        takes its expert weights from each exit's accuracy. Calibration and reports both call this, so the
        fitting lives in one place.
        """
        return self

    def with_threshold(self, value: float | int | Sequence[float] | None) -> Policy:
        """A copy with another value on the threshold axis (same kind, other parameters kept)."""
        if isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)
        return dataclasses.replace(self, **{self.axis: value})

    def check_thresholds(self, values: torch.Tensor) -> None:
        """Raise a PolicyError naming the bad value when a threshold is out of this policy's range."""
        if values.numel() and not bool(torch.isfinite(values).all()):
            raise PolicyError(f"{self.axis} values must be finite numbers for policy {self.kind!r}")
        if self.integer_axis:
            bad = values[(values != values.round()) | (values < 1)]
            if bad.numel():
                raise PolicyError(
                    f"{self.axis}={bad.flatten()[0].item():g} invalid for policy {self.kind!r}: "
                    "expected a whole number >= 1"
                )

    def init_state(
        self,
        num_samples: int,
        num_exits: int,
        thresholds: Any = None,
        regression: bool = False,
        device: torch.device | str | None = None,
    ) -> PolicyState:
        """A fresh state for ``num_samples`` rows and ``num_exits`` exits.

        ``thresholds``: None (the policy's own value), a scalar, a 1-D grid [T] of scalar values, or a
        2-D grid [T, K] with one value per exit. A list given as the policy's *own* parameter means one
        value per exit; a 1-D ``thresholds`` argument always means a grid.
        """
        if num_exits < 1:
            raise PolicyError(f"num_exits={num_exits}: expected at least one exit")
        if regression and not self.regression_ok:
            raise PolicyError(
                f"policy {self.kind!r} needs class probabilities; regression models (num_labels=1) "
                f"support only: {', '.join(regression_policies())}"
            )
        grid = self._grid_tensor(thresholds, num_exits)
        self.check_thresholds(grid)
        self.validate(num_exits)
        if device is not None:
            grid = grid.to(device)
        return PolicyState(grid, num_exits, regression, num_samples)

    def _grid_tensor(self, thresholds: Any, num_exits: int) -> torch.Tensor:
        if thresholds is None:
            own = self.threshold
            if own is None:
                hint = self.threshold_hint()
                raise PolicyError(f"policy {self.kind!r} needs a value for {self.axis} (threshold): {hint}")
            grid = torch.as_tensor(own, dtype=torch.float64)
            grid = grid.reshape(1, -1) if grid.ndim == 1 else grid.reshape(1, 1)
        else:
            grid = torch.as_tensor(thresholds, dtype=torch.float64).detach().cpu()
            if grid.ndim == 0:
                grid = grid.reshape(1, 1)
            elif grid.ndim == 1:
                grid = grid.reshape(-1, 1)
            elif grid.ndim != 2:
                raise PolicyError(f"thresholds of shape {tuple(grid.shape)}: expected scalar, [T] or [T, K]")
        if grid.shape[0] < 1:
            raise PolicyError("an empty threshold grid: expected at least one value")
        if grid.shape[1] == 1:
            grid = grid.expand(-1, num_exits)
        elif not self.per_exit_ok:
            raise PolicyError(f"policy {self.kind!r} takes one {self.axis} for all exits, not one per exit")
        elif grid.shape[1] != num_exits:
            raise PolicyError(
                f"{grid.shape[1]} per-exit {self.axis} values for a model with {num_exits} exits; "
                f"expected one value or {num_exits}"
            )
        return grid.contiguous()

    def validate(self, num_exits: int) -> None:
        """Check the fixed parameters against the model (number of exits); override when needed."""

    # -- stepping ------------------------------------------------------------------------------------
    def needs_output(self, state: PolicyState, exit_index: int) -> bool:
        """Whether this exit's head must be evaluated (False lets the runtime skip it, e.g. budget)."""
        return True

    def step(
        self, state: PolicyState, exit_index: int, output: ExitOutput
    ) -> tuple[PolicyState, torch.Tensor, torch.Tensor]:
        """Advance one exit: returns (state, exit_now bool [T, N], prediction [T, N]).

        ``prediction`` is what an input leaving here is labelled with (class id, or value for
        regression); it is the same for every threshold, returned as a broadcast view.
        """
        if self.temperatures is not None:
            if len(self.temperatures) != state.num_exits:
                raise PolicyError(
                    f"{len(self.temperatures)} temperatures for a model with {state.num_exits} exits; "
                    "expected one per exit"
                )
            output = ExitOutput(output.logits.float() / self.temperatures[exit_index], output.confidence)
        decision = self.update(state, exit_index, output)
        shape = (state.num_thresholds, state.num_samples)
        if exit_index == state.num_exits - 1:
            exit_now = torch.ones(shape, dtype=torch.bool, device=output.logits.device)
        else:
            exit_now = decision.expand(shape)
        if state.regression:
            current = output.prediction
            if self.ensemble:
                current = self._accumulate(state, exit_index, current)
            return state, exit_now, current.unsqueeze(0).expand(shape)
        probs = output.probs
        if self.ensemble:
            probs = self._accumulate(state, exit_index, probs)
            prediction = probs.argmax(-1)
        else:
            prediction = output.prediction
        state.values["probs"] = probs.unsqueeze(0)
        return state, exit_now, prediction.unsqueeze(0).expand(shape)

    def _accumulate(self, state: PolicyState, exit_index: int, current: torch.Tensor) -> torch.Tensor:
        """Running mean over the exits passed (every exit is evaluated when ensembling)."""
        total = state.values.get("ensemble_sum")
        total = current.unsqueeze(0) if total is None else total + current.unsqueeze(0)
        state.values["ensemble_sum"] = total
        return total[0] / (exit_index + 1)

    def update(self, state: PolicyState, exit_index: int, output: ExitOutput) -> torch.Tensor:
        """The exit decision at this exit, bool broadcastable to [T, N]; subclasses implement it."""
        raise NotImplementedError

    # -- grids and configs ---------------------------------------------------------------------------
    def grid(self, logits: Tensor, confidence: Tensor | None = None, size: int = 256) -> Tensor:
        """A 1-D grid of threshold values [T] worth sweeping for these cached logits [K, N, C]."""
        raise NotImplementedError

    @property
    def needs_confidence(self) -> bool:
        """True when the policy reads the learned-exit confidence (needs learned-exit heads)."""
        return getattr(self, "signal", None) == "learned"

    def params(self) -> dict[str, Any]:
        """The parameters that rebuild this policy with :func:`get_policy` (without temperatures)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "temperatures"}

    def to_config(self) -> dict[str, Any]:
        """``{"name", "params", "temperatures"}``: what ``model.config.policy`` stores."""
        return {"name": self.kind, "params": self.params(), "temperatures": self.temperatures}

    @classmethod
    def help_line(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]

    def threshold_hint(self) -> str:
        """What the threshold means and which way it goes, for error messages."""
        return self.help_line()


# ---------------------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------------------


def _value_grid(values: torch.Tensor, size: int, bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Midpoints between neighbouring distinct values (thinned to ``size``), plus both ends, ascending.

    Midpoints keep every grid value as far as possible from any observed signal value, so tiny
    floating-point differences between runs cannot flip a decision at a grid threshold.
    """
    flat = torch.unique(values.flatten().double())
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return torch.zeros(1, dtype=torch.float64)
    if flat.numel() > size:
        pos = torch.linspace(0, flat.numel() - 1, size).round().long()
        flat = torch.unique(flat[pos])
    mids = (flat[1:] + flat[:-1]) / 2
    span = float(flat[-1] - flat[0]) or 1.0
    ends = torch.stack([flat[0] - 1e-3 * span, flat[-1] + 1e-3 * span])
    grid = torch.cat([ends[:1], mids, ends[1:]])
    if bounds is not None:
        grid = grid.clamp(*bounds)
    return torch.unique(grid)


def _check_signal_threshold(values: torch.Tensor, signal: Signal, name: str) -> None:
    if signal.bounds is None or values.numel() == 0:
        return
    lo, hi = signal.bounds
    slack = 1e-5  # signal values themselves can overshoot their bounds by float rounding
    bad = values[(values < lo - slack) | (values > hi + slack)]
    if bad.numel():
        direction = ">=" if signal.confidence_positive else "<"
        raise PolicyError(
            f"{name}={bad.flatten()[0].item():g} out of range for signal {signal.name!r}: expected a value "
            f"in [{lo:g}, {hi:g}] (an exit is taken when {signal.name} {direction} {name})"
        )


def _number(value: Any, name: str, kind: str) -> float:
    """``float(value)`` for a real number, else a PolicyError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PolicyError(f"{name}={value!r} invalid for policy {kind!r}: expected a number")
    return float(value)


def _signal_hint(signal: Signal, name: str, lead: str = "an exit is taken when") -> str:
    op, way = (">=", "slower") if signal.confidence_positive else ("<", "faster")
    rng = f" ({name} in [{signal.bounds[0]:g}, {signal.bounds[1]:g}])" if signal.bounds else ""
    return f"{lead} {signal.name} {op} {name}{rng}; higher {name} = {way}"


def _check_signal_name(name: str) -> Signal:
    try:
        return get_signal(name)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None


@dataclass(kw_only=True)
class Budget(Policy):
    """budget(k): every input leaves at exit k (1-based), PCEE's budgeted exiting; k = K is the full model."""

    k: int | None = None

    kind: ClassVar[str] = "budget"
    axis: ClassVar[str] = "k"
    regression_ok: ClassVar[bool] = True
    integer_axis: ClassVar[bool] = True

    def init_state(
        self,
        num_samples: int,
        num_exits: int,
        thresholds: Any = None,
        regression: bool = False,
        device: torch.device | str | None = None,
    ) -> PolicyState:
        state = super().init_state(num_samples, num_exits, thresholds, regression, device)
        bad = state.thresholds[state.thresholds > num_exits]
        if bad.numel():
            raise PolicyError(
                f"k={bad[0].item():g} out of range for budget: this model has exits 1..{num_exits}"
            )
        return state

    def threshold_hint(self) -> str:
        return "k is the exit number every input leaves at, 1..K (K = the full model)"

    def needs_output(self, state: PolicyState, exit_index: int) -> bool:
        if self.ensemble or exit_index == state.num_exits - 1:
            return True
        needed = state.memo.get("exits")
        if needed is None:
            needed = state.memo["exits"] = {int(k) - 1 for k in state.thresholds[:, 0].tolist()}
        return exit_index in needed

    def update(self, state: PolicyState, exit_index: int, output: ExitOutput) -> torch.Tensor:
        return (state.threshold(exit_index) <= exit_index + 1).to(output.logits.device)

    def grid(self, logits: Tensor, confidence: Tensor | None = None, size: int = 256) -> Tensor:
        return torch.arange(1, logits.shape[0] + 1, dtype=torch.float64)


@dataclass(kw_only=True)
class Threshold(Policy):
    """threshold(signal, tau): leave at the first exit whose signal passes tau (DeeBERT, RightTool, ...).

    Confidence-positive signals (maxprob, learned) pass when value >= tau, so a higher tau is slower;
    difficulty-positive ones (entropy, norm_entropy, energy, norm_energy) pass when value < tau, so a
    higher tau is faster. A list of K values sets one tau per exit.
    """

    tau: float | list[float] | None = None
    signal: str = "maxprob"

    kind: ClassVar[str] = "threshold"
    axis: ClassVar[str] = "tau"
    per_exit_ok: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._signal = _check_signal_name(self.signal)
        super().__post_init__()

    def check_thresholds(self, values: torch.Tensor) -> None:
        super().check_thresholds(values)
        _check_signal_threshold(values, self._signal, self.axis)

    def threshold_hint(self) -> str:
        return _signal_hint(self._signal, self.axis)

    def update(self, state: PolicyState, exit_index: int, output: ExitOutput) -> torch.Tensor:
        values = output.signal(self._signal)
        return self._signal.passes(values.unsqueeze(0), state.threshold(exit_index))

    def grid(self, logits: Tensor, confidence: Tensor | None = None, size: int = 256) -> Tensor:
        k = max(1, logits.shape[0] - 1)  # the last exit always exits: its signal never matters
        scaled = _scaled(logits, self.temperatures)
        values = self._signal(scaled[:k], None if confidence is None else confidence[:k])
        return _value_grid(values, size, self._signal.bounds)


@dataclass(kw_only=True)
class Patience(Policy):
    """patience(t): PABEE; leave once t consecutive exits agreed with the exit before them.

    The counter is 0 at the first exit; at exit k it adds 1 when the prediction equals exit k-1's and
    resets to 0 otherwise; the input leaves when it reaches t (so t+1 exits in a row agree). For
    regression, |prediction_k - prediction_(k-1)| < tolerance counts as agreement. Higher t is slower.
    """

    t: int | None = None
    tolerance: float = 0.1

    kind: ClassVar[str] = "patience"
    axis: ClassVar[str] = "t"
    regression_ok: ClassVar[bool] = True
    integer_axis: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.tolerance = _number(self.tolerance, "tolerance", "patience")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise PolicyError(f"tolerance={self.tolerance!r}: expected a number >= 0")
        super().__post_init__()

    def threshold_hint(self) -> str:
        return "t is a whole number >= 1 of consecutive agreements; higher t = slower"

    def update(self, state: PolicyState, exit_index: int, output: ExitOutput) -> torch.Tensor:
        prediction = output.prediction.unsqueeze(0)
        previous = state.values.get("previous")
        if previous is None:
            count = torch.zeros(prediction.shape, dtype=torch.int32, device=prediction.device)
        else:
            if state.regression:
                agree = (prediction - previous).abs() < self.tolerance
            else:
                agree = prediction == previous
            count = torch.where(agree, state.values["count"] + 1, 0)
        state.values["previous"] = prediction
        state.values["count"] = count
        return count >= state.threshold(exit_index)

    def grid(self, logits: Tensor, confidence: Tensor | None = None, size: int = 256) -> Tensor:
        return torch.arange(1, max(2, logits.shape[0]), dtype=torch.float64)


@dataclass(kw_only=True)
class PCEE(Policy):
    """pcee(tau, t, signal): PCEE-BERT; leave when t consecutive exits were confident (eq. 3).

    The counter adds 1 at an exit whose signal passes tau and resets to 0 otherwise; the input leaves
    when it reaches t. v0 uses norm_entropy (eq. 2; confident when < tau, higher tau is faster), v1
    maxprob and v2 the learned confidence (confident when >= tau, higher tau is slower).
    """

    tau: float | None = None
    t: int = 2
    signal: str = "norm_entropy"

    kind: ClassVar[str] = "pcee"
    axis: ClassVar[str] = "tau"

    def __post_init__(self) -> None:
        self._signal = _check_signal_name(self.signal)
        t = _number(self.t, "t", "pcee")
        if not t.is_integer() or t < 1:
            raise PolicyError(f"t={self.t!r} invalid for policy 'pcee': expected a whole number >= 1")
        self.t = int(t)
        super().__post_init__()

    def check_thresholds(self, values: torch.Tensor) -> None:
        super().check_thresholds(values)
        _check_signal_threshold(values, self._signal, self.axis)

    def threshold_hint(self) -> str:
        return _signal_hint(self._signal, self.axis, f"an input leaves after t={self.t} exits in a row with")

    def update(self, state: PolicyState, exit_index: int, output: ExitOutput) -> torch.Tensor:
        values = output.signal(self._signal)
        confident = self._signal.passes(values.unsqueeze(0), state.threshold(exit_index))
        count = state.values.get("count")
        count = confident.to(torch.int32) if count is None else torch.where(confident, count + 1, 0)
        state.values["count"] = count
        return count >= self.t

    def grid(self, logits: Tensor, confidence: Tensor | None = None, size: int = 256) -> Tensor:
        k = max(1, logits.shape[0] - 1)
        scaled = _scaled(logits, self.temperatures)
        values = self._signal(scaled[:k], None if confidence is None else confidence[:k])
        return _value_grid(values, size, self._signal.bounds)


@dataclass(kw_only=True)
class BEEM(Policy):
    """beem(alpha, weights): BEEM; exits act as experts whose weighted confidences add up while they agree.

    S_1 = w_1 C_1; S_k = S_(k-1) + w_k C_k when exit k predicts the same class as exit k-1, else
    S_k = w_k C_k (the paper's rule, not its released code, which resets S to 0); C_k = max-prob.
    Leave when S_k >= alpha (one alpha, or a list with one per exit); higher alpha is slower.
    ``weights="cost"`` is BEEM-C, w_k = lam * k (k = 1-based exit number, lam = 0.1 in the paper);
    BEEM-A passes the validation accuracy of each exit as a list (:meth:`fit` measures it).
    """

    alpha: float | list[float] | None = None
    weights: str | list[float] = "cost"
    lam: float = 0.1

    kind: ClassVar[str] = "beem"
    axis: ClassVar[str] = "alpha"
    per_exit_ok: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.weights, str):
            if self.weights not in ("cost", "accuracy"):
                raise PolicyError(
                    f"weights={self.weights!r}: expected 'cost' (BEEM-C, w_k = lam*k) or a list of per-exit "
                    "weights (BEEM-A: validation accuracy of each exit)"
                )
        else:
            weights = [_number(w, "weights", "beem") for w in self.weights]
            if not all(math.isfinite(w) and w >= 0 for w in weights):
                raise PolicyError(f"weights={weights}: expected non-negative numbers, one per exit")
            self.weights = weights
        self.lam = _number(self.lam, "lam", "beem")
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise PolicyError(f"lam={self.lam!r}: expected a positive number (the cost per exit of BEEM-C)")
        self._maxprob = get_signal("maxprob")
        super().__post_init__()

    def check_thresholds(self, values: torch.Tensor) -> None:
        super().check_thresholds(values)
        bad = values[values < 0]
        if bad.numel():
            raise PolicyError(f"alpha={bad.flatten()[0].item():g} invalid for policy 'beem': expected >= 0")

    def validate(self, num_exits: int) -> None:
        if self.weights == "accuracy":
            raise PolicyError(
                "BEEM-A needs weights=[accuracy of exit 1, ..., exit K] measured on a validation split: "
                "run `offramp calibrate MODEL_DIR --rule beem --policy beem-a` or Policy.fit(logits, labels)"
            )
        if isinstance(self.weights, list) and len(self.weights) != num_exits:
            raise PolicyError(
                f"{len(self.weights)} BEEM weights for a model with {num_exits} exits; expected one per exit"
            )

    def fit(self, logits: Any, labels: Any) -> Policy:
        """BEEM-A (``weights="accuracy"``): w_k = the validation accuracy of exit k; otherwise unchanged."""
        if self.weights != "accuracy":
            return self
        z, y = torch.as_tensor(logits), torch.as_tensor(labels)
        accuracy = (z.argmax(-1) == y.unsqueeze(0)).double().mean(1)
        return dataclasses.replace(self, weights=[float(v) for v in accuracy])

    def threshold_hint(self) -> str:
        return "alpha >= 0; an input leaves once its summed score S_k >= alpha; higher alpha = slower"

    def weight(self, exit_index: int) -> float:
        if isinstance(self.weights, list):
            return self.weights[exit_index]
        return self.lam * (exit_index + 1)

    def update(self, state: PolicyState, exit_index: int, output: ExitOutput) -> torch.Tensor:
        score = self.weight(exit_index) * output.signal(self._maxprob).unsqueeze(0)
        prediction = output.prediction.unsqueeze(0)
        previous = state.values.get("previous")
        if previous is not None:
            score = torch.where(prediction == previous, state.values["score"] + score, score)
        state.values["previous"] = prediction
        state.values["score"] = score
        return score >= state.threshold(exit_index)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """S_k for every exit and sample, [K, N], by running this policy's own steps."""
        logits = torch.as_tensor(logits)
        num_exits, num_samples = logits.shape[:2]
        state = self.init_state(num_samples, num_exits, thresholds=0.0)
        out = []
        for k in range(num_exits):
            state, _, _ = self.step(state, k, ExitOutput(logits[k]))
            out.append(state.values["score"][0])
        return torch.stack(out)

    def grid(self, logits: Tensor, confidence: Tensor | None = None, size: int = 256) -> Tensor:
        scores = self.scores(logits)[: max(1, logits.shape[0] - 1)]
        return _value_grid(scores, size).clamp(min=0.0).unique()


def _scaled(logits: torch.Tensor, temperatures: list[float] | None) -> torch.Tensor:
    logits = torch.as_tensor(logits)
    if temperatures is None:
        return logits
    temps = torch.as_tensor(temperatures, dtype=torch.float32, device=logits.device)
    return logits.float() / temps.view(-1, *([1] * (logits.ndim - 1)))


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """A registry entry: a policy class plus preset parameters under a name."""

    name: str
    cls: type[Policy]
    defaults: dict[str, Any]
    description: str


_REGISTRY: dict[str, PolicySpec] = {}


def register_policy(name: str, cls: type[Policy], description: str | None = None, **defaults: Any) -> None:
    """Register ``cls`` under ``name`` with preset parameters (e.g. a signal)."""
    if name in _REGISTRY:
        raise PolicyError(f"policy {name!r} is already registered")
    _REGISTRY[name] = PolicySpec(name, cls, dict(defaults), description or cls.help_line())


def list_policies(pattern: str = "*") -> list[str]:
    """Registered policy names, optionally filtered by a shell-style wildcard (``'pcee*'``)."""
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


def regression_policies() -> list[str]:
    """Names of the policies that work on regression models."""
    return [name for name, spec in _REGISTRY.items() if spec.cls.regression_ok]


def policy_spec(name: str) -> PolicySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(_REGISTRY)}") from None


def get_policy(name: str, **params: Any) -> Policy:
    """Build a policy by registry name. ``threshold=`` is accepted as a synonym of the policy's axis.

    >>> get_policy("pcee", tau=0.3, t=2)   # same as get_policy("pcee", threshold=0.3, t=2)
    """
    spec = policy_spec(name)
    if "threshold" in params:
        params[spec.cls.axis] = params.pop("threshold")
    known = {f.name for f in dataclasses.fields(spec.cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise PolicyError(
            f"policy {name!r} has no parameter {unknown[0]!r}; expected some of: {', '.join(sorted(known))}"
        )
    try:
        return spec.cls(**{**spec.defaults, **params})
    except TypeError as exc:  # e.g. a wrong type that dataclasses cannot take
        raise PolicyError(f"bad parameters for policy {name!r}: {exc}") from None


def policy_from_config(config: dict[str, Any] | Policy | str) -> Policy:
    """A policy from ``model.config.policy`` (``{"name", "params", "temperatures"}``), a name, or itself."""
    if isinstance(config, Policy):
        return config
    if isinstance(config, str):
        return get_policy(config)
    if not isinstance(config, dict) or "name" not in config:
        raise PolicyError(f"policy config {config!r}: expected a dict with 'name' and 'params'")
    params = dict(config.get("params") or {})
    if config.get("temperatures") is not None:
        params["temperatures"] = config["temperatures"]
    return get_policy(config["name"], **params)


def describe_policies() -> str:
    """One line per registered policy, for ``--help`` texts."""
    lines = []
    for name, spec in _REGISTRY.items():
        lines.append(f"  {name:<13} [{spec.cls.axis}] {spec.description}")
    return "\n".join(lines)


def _signal_description(name: str) -> str:
    s = SIGNALS[name]
    op, way = (">=", "slower") if s.confidence_positive else ("<", "faster")
    rng = f", tau in [{s.bounds[0]:g}, {s.bounds[1]:g}]" if s.bounds else ""
    return f"first exit with {name} {op} tau{rng}; higher tau = {way}"


register_policy("budget", Budget, "every input leaves at exit k (1-based); k = K is the full model")
register_policy("threshold", Threshold, "first exit whose signal passes tau (--param signal=NAME)")
for _name in SIGNALS:
    register_policy(_name, Threshold, _signal_description(_name), signal=_name)
register_policy("patience", Patience, "PABEE: t exits in a row agreed with the one before; higher t = slower")
register_policy("pcee", PCEE, "PCEE: t (default 2) exits in a row with norm_entropy < tau; higher = faster")
register_policy("pcee-v1", PCEE, "PCEE v1: t in a row with maxprob >= tau; higher = slower", signal="maxprob")
register_policy("pcee-v2", PCEE, "PCEE v2: t in a row with learned >= tau; higher = slower", signal="learned")
register_policy("beem", BEEM, "BEEM-C: sum of 0.1*k*maxprob over agreeing exits >= alpha; higher = slower")
register_policy("beem-a", BEEM, "BEEM-A: as beem with w_k = validation accuracy", weights="accuracy")
