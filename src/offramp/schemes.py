"""Training schemes: which exit losses train which parameters, when; a registry by name.

A scheme is one small config dataclass (peft-style: its options, validated) registered by name, and one
:class:`Scheme` class its ``build(model)`` returns. The trainer (:mod:`offramp.train`) drives a built
scheme: its stages (two-stage has two), the loss of each, extra ``forward`` arguments (SWEET's gradient
stop), and any state that must survive a checkpoint (COSEE's signal range and threshold RNG). The
formulas themselves live in :mod:`offramp.losses`.

Registered: ``joint``, ``weighted``, ``beem-kd``, ``sweet``, ``cosee``, ``two-stage``, ``multi-model``.
Adding a scheme = one config dataclass with ``build`` and ``@register_scheme``, plus its :class:`Scheme`
subclass when no existing one fits.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

# The module, not the function: COSEE looks the exit rule up at call time, so there is one copy of it
# (``simulate.simulate`` over ``policies``), and a spy on ``offramp.simulate.simulate`` sees every call.
from . import simulate as simulation
from .losses import (
    beem_kd_loss,
    cosee_beta,
    exit_correct,
    exit_weights,
    joint_loss,
    learned_exit_loss,
    osc_loss,
    per_exit_task_loss,
    swm_loss,
    swm_weights,
    weighted_loss,
)
from .policies import Policy, get_policy
from .signals import SIGNALS, get_signal

#: ``loss(output, batch, info)``: a scalar to minimise; ``info`` holds step, total_steps, regression, ...
LossFn = Callable[[Any, dict[str, torch.Tensor], dict[str, Any]], torch.Tensor]

# =============================================================================================
# What the trainer drives
# =============================================================================================


@dataclass
class Stage:
    """One training stage: which parameters train, with which loss.

    ``trainable(model)`` returns the names of the parameters to train (all others are frozen for the
    stage); ``select_by`` overrides ``TrainConfig.select_by`` for best-epoch selection; ``epochs``
    overrides ``TrainConfig.epochs``. ``exit_weights`` [K]: how the stage's loss combines the exits
    (0 for an exit it does not train), so a teacher's distillation term (``losses.teacher_kd_loss``)
    is mixed into each exit's loss in the same proportion; None: 1 per exit.
    """

    name: str
    loss: LossFn
    trainable: Callable[[nn.Module], set[str]] | None = None
    select_by: str | None = None
    epochs: float | None = None
    forward_kwargs: dict[str, Any] = field(default_factory=dict)
    exit_weights: torch.Tensor | None = None

    def exit_mix(self, num_exits: int) -> torch.Tensor:
        """``exit_weights``, or 1 per exit."""
        return self.exit_weights if self.exit_weights is not None else torch.ones(num_exits)


class Scheme:
    """A built training scheme: subclasses implement :meth:`task_loss` (and :meth:`stages` for several)."""

    def __init__(self, config: SchemeConfig, model: nn.Module):
        self.config = config
        self.num_exits = int(model.num_exits)
        self.exits = list(model.exits)
        self.regression = bool(model.is_regression)
        self.forward_kwargs: dict[str, Any] = {}
        self.learned: LearnedExitConfig | None = None

    # -- the objective ------------------------------------------------------------------------
    def task_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        """The scheme's own objective over the exits' outputs."""
        raise NotImplementedError

    def loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        """The scheme's objective plus, with learned-exit heads, λ·(learned-exit loss)."""
        value = self.task_loss(output, batch, info)
        return value + self.learned_term(output, batch)

    def learned_term(self, output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """λ·(learned-exit loss) over all exits, or 0 without learned-exit heads."""
        if self.learned is None or output.confidence is None:
            return output.logits.sum() * 0.0
        term = learned_exit_loss(
            output.confidence, output.logits, batch["labels"], self.learned.loss, self.regression
        )
        return self.learned.weight * term

    def exit_weights(self) -> torch.Tensor:
        """ω [K]: the loss is Σ_k ω_k·L_k over per-exit losses L_k (1 each by default, as Σ_k CE_k)."""
        return torch.ones(self.num_exits)

    def stages(self) -> list[Stage]:
        """The stages to train in order; one by default."""
        stage = Stage("train", self.loss, forward_kwargs=dict(self.forward_kwargs))
        stage.exit_weights = self.exit_weights()
        return [stage]

    # -- hooks and state ----------------------------------------------------------------------
    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """While training: with ``learned.detach``, the confidence heads see detached inputs, so their
        loss trains the heads only and never the backbone or the classifiers."""
        handles = []
        if self.learned is not None and self.learned.detach:
            for head in getattr(model, "heads", []):
                if getattr(head, "confidence", None) is not None:
                    handles.append(head.confidence.register_forward_pre_hook(_detach_inputs))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def start(self, seed: int, rank: int = 0) -> None:
        """Called once at the start of a fresh (not resumed) run."""

    def on_epoch_end(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Called after each training epoch; ``gather`` concatenates a tensor over processes."""

    def state_dict(self) -> dict[str, Any]:
        """Resumable state: tensors and JSON-able values only (no pickle)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _detach_inputs(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


# =============================================================================================
# Configs and registry
# =============================================================================================


@dataclass
class SchemeConfig:
    """Base of all scheme configs; ``name`` is the registry key."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def build(self, model: nn.Module) -> Scheme:
        """The scheme for ``model`` (its exits and task)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the scheme (saved with the model and checked on resume)."""
        return {"name": self.name, **dataclasses.asdict(self)}

    @classmethod
    def route_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options as given by name (e.g. from the CLI), mapped onto this config's fields."""
        return options


@dataclass
class LearnedExitConfig:
    """BERxiT learning-to-exit heads: one confidence logit per exit, trained to predict "this exit is right".

    ``loss``: ``mse`` on σ(c) (BERxiT's J_i = (u_i − t_i)²) or ``bce`` on the logit. ``detach``: the
    heads' inputs are detached (default), so the correctness objective trains the confidence heads only
    and never reshapes the backbone the classifiers share (SWEET §5 and PCEE-v2 describe it as a
    separate module learned alongside the classifiers). ``weight``: λ on the mean over exits and samples.
    """

    loss: str = "mse"
    detach: bool = True
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "bce"):
            raise ValueError(f"learned-exit loss must be 'mse' or 'bce', got {self.loss!r}")
        if self.weight < 0:
            raise ValueError(f"learned-exit weight must be >= 0, got {self.weight}")


SCHEMES: dict[str, type[SchemeConfig]] = {}


def register_scheme(cls: type[SchemeConfig]) -> type[SchemeConfig]:
    """Class decorator: make a scheme config available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    SCHEMES[cls.name] = cls
    return cls


def list_schemes() -> list[str]:
    """Registered scheme names."""
    return list(SCHEMES)


def scheme_options(name: str) -> dict[str, tuple[type, Any]]:
    """The options of a scheme: {field: (type, default)}."""
    cls = _scheme_class(name)
    hints = typing.get_type_hints(cls)
    return {
        f.name: (hints[f.name], f.default if f.default is not dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(cls)
    }


def _scheme_class(name: str) -> type[SchemeConfig]:
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown training scheme {name!r}; expected one of {', '.join(SCHEMES)}") from None


def get_scheme_config(name: str, **options: Any) -> SchemeConfig:
    """A scheme config by name, e.g. ``get_scheme_config("cosee", alpha=0.1)``; unknown options are errors.

    For ``sweet``, options that are not SWEET's own go to its base loss
    (``get_scheme_config("sweet", base_loss="beem-kd", temperature=2.0)``).
    """
    cls = _scheme_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    options = cls.route_options(options)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"scheme {name!r} has no option(s) {unknown}; its options: {sorted(known) or 'none'}"
        )
    return cls(**{k: _coerce(cls, k, v) for k, v in options.items()})


def _coerce(cls: type, key: str, value: Any) -> Any:
    """Turn CLI strings into the field's type (float, int, bool)."""
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(cls)[key]
    kinds = typing.get_args(hint) or (hint,)
    if bool in kinds:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"option {key}={value!r}: expected true or false")
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"option {key}={value!r}: expected a {kind.__name__}") from None
    if value.lower() == "none" and type(None) in kinds:
        return None
    return value


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """``["alpha=0.1", "signal=maxprob"]`` -> {"alpha": "0.1", "signal": "maxprob"} (values coerced later)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"scheme option {pair!r}: expected KEY=VALUE, e.g. alpha=0.1")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def build_scheme(
    config: SchemeConfig | str,
    model: nn.Module,
    learned_exit: LearnedExitConfig | bool | None = None,
) -> Scheme:
    """Build a scheme for ``model``. A model with learned-exit heads always trains them (default
    :class:`LearnedExitConfig` unless one is given), so no parameter goes without a gradient."""
    if isinstance(config, str):
        config = get_scheme_config(config)
    scheme = config.build(model)
    has_heads = bool(getattr(model.config, "learned_exit", False))
    if isinstance(learned_exit, bool):
        learned_exit = LearnedExitConfig() if learned_exit else None
    if learned_exit is not None and not has_heads:
        raise ValueError(
            "learned-exit training needs a model built with learned_exit=True (confidence heads)"
        )
    if has_heads:
        scheme.learned = learned_exit or LearnedExitConfig()
    return scheme


# =============================================================================================
# The schemes
# =============================================================================================


class FnScheme(Scheme):
    """A one-stage scheme whose objective is one formula ``fn(logits, labels, regression, **kwargs)``."""

    def __init__(
        self, config: SchemeConfig, model: nn.Module, fn: Callable[..., torch.Tensor], **kwargs: Any
    ):
        super().__init__(config, model)
        self.fn = fn
        self.kwargs = kwargs

    def exit_weights(self) -> torch.Tensor:
        """w_k / Σ w for the weighted objectives (``weights`` given), else 1 per exit (Σ_k CE_k)."""
        weights = self.kwargs.get("weights")
        if weights is None:
            return super().exit_weights()
        return weights.float() / weights.float().sum()

    def task_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        return self.fn(output.logits, batch["labels"], regression=self.regression, **self.kwargs)


class LossFnScheme(Scheme):
    """A bare ``loss_fn(output, batch, info)`` hook as a one-stage scheme (``train(..., loss_fn=...)``)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, forward_kwargs: dict[str, Any] | None = None):
        super().__init__(SchemeConfig(), model)
        self.fn = loss_fn
        self.forward_kwargs = dict(forward_kwargs or {})

    def task_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        return self.fn(output, batch, info)


# -- joint, weighted, BEEM -------------------------------------------------------------------------


@register_scheme
@dataclass
class JointConfig(SchemeConfig):
    """Σ_k CE_k (DeeBERT 'all'; SWEET's Early-Exit baseline)."""

    name: ClassVar[str] = "joint"
    description: ClassVar[str] = "sum of the exits' cross-entropies (DeeBERT 'all', SWEET's baseline)"

    def build(self, model: nn.Module) -> Scheme:
        return FnScheme(self, model, joint_loss)


@register_scheme
@dataclass
class WeightedConfig(SchemeConfig):
    """Σ_k w_k·CE_k / Σ_k w_k, w_k = k (PABEE; PCEE-BERT eq. 1); ``weight_by="layer"`` uses l_k."""

    name: ClassVar[str] = "weighted"
    description: ClassVar[str] = "cross-entropies weighted by exit depth k (PABEE, PCEE-BERT eq. 1)"
    weight_by: str = "index"

    def __post_init__(self) -> None:
        exit_weights([1], self.weight_by)

    def build(self, model: nn.Module) -> Scheme:
        return FnScheme(self, model, weighted_loss, weights=exit_weights(model.exits, self.weight_by))


@register_scheme
@dataclass
class BeemKDConfig(SchemeConfig):
    """BEEM: L_k = CE_k + KD(p_K → p_k) with KL(p_K^τ ‖ p_k^τ)·τ²; total Σ_k k·L_k / Σ_k k."""

    name: ClassVar[str] = "beem-kd"
    description: ClassVar[str] = "depth-weighted CE + distillation from the final exit (BEEM)"
    temperature: float = 1.0
    weight_by: str = "index"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        exit_weights([1], self.weight_by)

    def build(self, model: nn.Module) -> Scheme:
        return FnScheme(
            self,
            model,
            beem_kd_loss,
            temperature=self.temperature,
            weights=exit_weights(model.exits, self.weight_by),
        )


# -- SWEET ---------------------------------------------------------------------------------------


@register_scheme
@dataclass
class SweetConfig(SchemeConfig):
    """SWEET: exit k's gradient stops at exit k−1 (each layer is updated by one exit), on any base loss."""

    name: ClassVar[str] = "sweet"
    description: ClassVar[str] = "separated gradients: exit k only updates the layers since exit k-1 (SWEET)"
    base_loss: str = "joint"
    base_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.base_loss in ("sweet", "two-stage", "multi-model"):
            raise ValueError(f"sweet's base loss must be a one-stage loss, not {self.base_loss!r}")
        self.base = get_scheme_config(self.base_loss, **self.base_options)

    @classmethod
    def route_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options that are not SWEET's own go to its base loss."""
        known = {f.name for f in dataclasses.fields(cls)}
        base_opts = {k: v for k, v in options.items() if k not in known}
        options = {k: v for k, v in options.items() if k in known}
        if base_opts:
            options["base_options"] = {**options.get("base_options", {}), **base_opts}
        return options

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base_loss": self.base_loss, "base_options": dataclasses.asdict(self.base)}

    def build(self, model: nn.Module) -> Scheme:
        scheme = self.base.build(model)
        scheme.config = self
        scheme.forward_kwargs["gradient_stop"] = True
        return scheme


# -- COSEE ---------------------------------------------------------------------------------------


@register_scheme
@dataclass
class CoseeConfig(SchemeConfig):
    """COSEE: sample weighting (SWM, eq. 2–5) + online signal calibration (OSC, eq. 6–9).

    Defaults: K = 5 thresholds, ε = 0.3 (fixed in the paper), and α = 0.1, β₀ = 10 — the paper's
    SST-2 starting point (App. A; QNLI used α = 0.01, β₀ = 1; its grid is α ∈ {0.001, 0.01, 0.1, 1},
    β₀ ∈ {0.05, 0.2, 1, 10}). ``signal``: any name in ``signals.SIGNALS`` except ``learned``;
    the paper's main signal is normalised energy; its "entropy" is the normalised entropy
    (``norm_entropy``) and its "softmax score" is ``maxprob``.
    """

    name: ClassVar[str] = "cosee"
    description: ClassVar[str] = "sample weighting around simulated exits + signal calibration (COSEE)"
    signal: str = "norm_energy"
    num_thresholds: int = 5
    margin: float = 0.3
    alpha: float = 0.1
    beta0: float = 10.0

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS or self.signal == "learned":
            names = [s for s in SIGNALS if s != "learned"]
            raise ValueError(f"COSEE signal must be one of {', '.join(names)}, got {self.signal!r}")
        if self.num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {self.num_thresholds}")
        if self.alpha < 0 or self.beta0 < 0:
            raise ValueError("alpha and beta0 must be >= 0")

    def build(self, model: nn.Module) -> Scheme:
        return CoseeScheme(self, model)


class CoseeScheme(Scheme):
    """COSEE's training objective, with its per-epoch signal range as checkpointed state.

    Each step (paper §3.2–3.4): all exits run; K thresholds are drawn uniformly from [lo, hi], the min
    and max of the signal over the training samples of the previous epoch — (0, 1) in the first epoch;
    the exit rule itself (``policies.get_policy("threshold", signal=...)`` through ``simulate.simulate``)
    gives each sample's exit m*_n at each threshold; weights and loss follow eq. 2–5 (per-sample weights
    sum to 1 over exits; batch mean; plain mean over the K thresholds), plus α·OSC (eq. 6–9).

    Readings where the paper leaves room (the authors' code agrees where it says anything): the range
    covers the internal exits 1..K−1 (the paper says "all layers"; the last exit's signal never decides
    an exit and the code leaves it out); β_t uses t = optimiser steps done so far (0 at the first step);
    |m − m*| is counted in exits, not layers, when exits are sparse; with several processes the range is
    the min and max over all of them. The simulation runs without gradient on detached logits; OSC keeps
    its gradient.
    """

    def __init__(self, config: CoseeConfig, model: nn.Module):
        super().__init__(config, model)
        if self.regression:
            raise ValueError(
                "COSEE needs a classification task: its exit signals and 'easy' samples need classes"
            )
        self.cfg = config
        self.signal = get_signal(config.signal)
        self.range = (0.0, 1.0)
        self.epoch_min, self.epoch_max = math.inf, -math.inf
        self.generator = torch.Generator().manual_seed(0)
        self._policy: Policy | None = None

    def _simulate(
        self, logits: torch.Tensor, thresholds: torch.Tensor, confidence: torch.Tensor | None
    ) -> torch.Tensor:
        """Exit slots [T, B] from the shared exit-policy code (never a second copy of the rule)."""
        if self._policy is None:
            self._policy = get_policy("threshold", signal=self.cfg.signal)
        result = simulation.simulate(self._policy, logits, thresholds, confidence=confidence)
        return torch.as_tensor(result.exit_slot, device=logits.device).long()

    def task_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        logits, labels = output.logits, batch["labels"]
        per_exit = per_exit_task_loss(logits, labels, regression=False)  # [K, B]
        with torch.no_grad():
            detached = logits.detach()
            if self.num_exits > 1:
                values = self.signal(detached[:-1])
                self.epoch_min = min(self.epoch_min, float(values.min()))
                self.epoch_max = max(self.epoch_max, float(values.max()))
            lo, hi = self.range
            thresholds = lo + (hi - lo) * torch.rand(self.cfg.num_thresholds, generator=self.generator)
            slots = self._simulate(detached, thresholds.to(logits.device), None)
            beta = cosee_beta(info.get("step", 0), info.get("total_steps", 1), self.cfg.beta0)
            weights = swm_weights(slots, self.num_exits, beta)
        ce = swm_loss(per_exit, weights)
        if self.cfg.alpha == 0:
            return ce
        signal_values = self.signal(logits)  # with gradient
        osc = osc_loss(
            signal_values, exit_correct(logits, labels), self.cfg.margin, self.signal.confidence_positive
        )
        return ce + self.cfg.alpha * osc

    def start(self, seed: int, rank: int = 0) -> None:
        self.generator.manual_seed(int(seed) * 1009 + rank)
        self.range = (0.0, 1.0)
        self.epoch_min, self.epoch_max = math.inf, -math.inf

    def on_epoch_end(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        lo, hi = self.epoch_min, self.epoch_max
        if gather is not None:
            both = gather(torch.tensor([lo, -hi], dtype=torch.float64)).view(-1, 2)
            lo, hi = float(both[:, 0].min()), -float(both[:, 1].min())
        if math.isfinite(lo) and math.isfinite(hi):
            self.range = (lo, hi)
        self.epoch_min, self.epoch_max = math.inf, -math.inf

    def state_dict(self) -> dict[str, Any]:
        return {
            "range": list(self.range),
            "epoch_min": None if math.isinf(self.epoch_min) else self.epoch_min,
            "epoch_max": None if math.isinf(self.epoch_max) else self.epoch_max,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.range = (float(state["range"][0]), float(state["range"][1]))
        self.epoch_min = math.inf if state["epoch_min"] is None else float(state["epoch_min"])
        self.epoch_max = -math.inf if state["epoch_max"] is None else float(state["epoch_max"])
        self.generator.set_state(state["generator"])

    def exit_weights(self) -> torch.Tensor:
        """1/K: each sample's SWM weights sum to 1 over the exits (uniform at β = 0)."""
        return torch.full((self.num_exits,), 1.0 / self.num_exits)


# -- two-stage (DeeBERT) -------------------------------------------------------------------------


@register_scheme
@dataclass
class TwoStageConfig(SchemeConfig):
    """DeeBERT: stage 1 fine-tunes backbone + final exit (CE_K); stage 2 freezes them and trains the
    other exits' heads (Σ_{k<K} CE_k). ``stage2_epochs``: None = as many as stage 1."""

    name: ClassVar[str] = "two-stage"
    description: ClassVar[str] = "final exit first, then the other heads on a frozen backbone (DeeBERT)"
    stage2_epochs: float | None = None

    def build(self, model: nn.Module) -> Scheme:
        return TwoStageScheme(self, model)


class TwoStageScheme(Scheme):
    """DeeBERT's two stages: the final exit's CE, then the other exits' CE sum on a frozen backbone."""

    def __init__(self, config: TwoStageConfig, model: nn.Module):
        super().__init__(config, model)
        self.cfg = config

    def final_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        """Stage 1: CE of the final exit only."""
        return per_exit_task_loss(output.logits[-1:], batch["labels"], self.regression).mean()

    def exits_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        """Stage 2: Σ_{k<K} CE_k, plus the learned-exit term."""
        task = joint_loss(output.logits[:-1], batch["labels"], self.regression)
        return task + self.learned_term(output, batch)

    def task_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        raise RuntimeError("two-stage training has two losses; use stages()")

    def stages(self) -> list[Stage]:
        last = self.num_exits - 1
        final_only = torch.zeros(self.num_exits)
        final_only[last] = 1.0
        stage1 = Stage(
            "final-exit",
            self.final_loss,
            trainable=lambda m: stage1_parameters(m, last),
            select_by="last",
            exit_weights=final_only,
        )
        if self.num_exits == 1:
            return [stage1]
        stage2 = Stage(
            "other-exits",
            self.exits_loss,
            trainable=lambda m: stage2_parameters(m, last),
            epochs=self.cfg.stage2_epochs,
            exit_weights=1.0 - final_only,
        )
        return [stage1, stage2]


def stage1_parameters(model: nn.Module, last: int) -> set[str]:
    """DeeBERT stage 1: everything except the internal heads and any confidence heads."""
    return {
        n
        for n, _ in model.named_parameters()
        if not (n.startswith("heads.") and (int(n.split(".")[1]) != last or ".confidence." in n))
    }


def stage2_parameters(model: nn.Module, last: int) -> set[str]:
    """DeeBERT stage 2: the internal heads (and all confidence heads); backbone, final classifier frozen."""
    return {
        n
        for n, _ in model.named_parameters()
        if n.startswith("heads.") and (int(n.split(".")[1]) != last or ".confidence." in n)
    }


# -- multi-model (SWEET's baseline) --------------------------------------------------------------


@register_scheme
@dataclass
class MultiModelConfig(SchemeConfig):
    """Independent truncated models of depths l_1..l_K, each fine-tuned alone with CE, run as a cascade.

    Not a loss over one model: ``train.build_and_train`` trains the members and saves a
    :class:`offramp.cascade.CascadeModel`.
    """

    name: ClassVar[str] = "multi-model"
    description: ClassVar[str] = "independent truncated models l_1..l_K, one CE each, saved as a cascade"

    def build(self, model: nn.Module) -> Scheme:
        # Each member has a single exit, where every scheme reduces to plain CE.
        return JointConfig().build(model)
