"""Training schemes for multi-exit models: the objectives over all exits, and a registry by name.

Two layers, top to bottom:

* **pure loss functions** of stacked exit outputs (``logits`` [K, B, C], ``labels`` [B]), each one
  formula from a paper, testable by hand: :func:`joint_loss`, :func:`weighted_loss`,
  :func:`beem_kd_loss`, :func:`swm_weights` / :func:`swm_loss` / :func:`osc_loss` (COSEE),
  :func:`learned_exit_loss` (BERxiT);
* **schemes**: one small config dataclass per method (peft-style), registered by name
  (``joint``, ``weighted``, ``beem-kd``, ``sweet``, ``cosee``, ``two-stage``, ``multi-model``).
  ``config.build(model)`` gives a :class:`Scheme`, which is what the trainer in ``train.py`` drives:
  its stages (two-stage has two), the loss of each, extra ``forward`` arguments (SWEET's gradient
  stop), and any state that must survive a checkpoint (COSEE's signal range and threshold RNG).

Adding a scheme = one dataclass with ``build`` plus ``@register_scheme``.
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
import torch.nn.functional as F
from torch import nn

from .signals import SIGNALS, get_signal

# =============================================================================================
# Pure loss functions
# =============================================================================================


def per_exit_task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Per-sample task loss at every exit: [K, B] (cross-entropy, or squared error for regression)."""
    num_exits, batch = logits.shape[:2]
    if regression:
        return (logits.squeeze(-1).float() - labels.float().unsqueeze(0)) ** 2
    flat = F.cross_entropy(
        logits.reshape(num_exits * batch, -1).float(), labels.repeat(num_exits), reduction="none"
    )
    return flat.view(num_exits, batch)


def exit_weights(exits: list[int], weight_by: str = "index") -> torch.Tensor:
    """The weights w_k of the weighted objectives: exit index k = 1..K, or the exit's layer l_k.

    PABEE and PCEE (eq. 1) put an exit after every layer, where the two coincide; PCEE motivates the
    weight as "the relative inference cost of exit m", which is the layer number when exits are sparse.
    """
    if weight_by == "index":
        return torch.arange(1, len(exits) + 1, dtype=torch.float32)
    if weight_by == "layer":
        return torch.tensor(exits, dtype=torch.float32)
    raise ValueError(f"weight_by must be 'index' or 'layer', got {weight_by!r}")


def joint_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool = False) -> torch.Tensor:
    """Σ_k CE_k, each CE_k the batch mean (DeeBERT's 'all' objective, SWEET's Early-Exit baseline)."""
    return per_exit_task_loss(logits, labels, regression).mean(dim=1).sum()


def weighted_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    regression: bool = False,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_k w_k·CE_k / Σ_k w_k with w_k = k by default (PABEE; PCEE-BERT eq. 1)."""
    per_exit = per_exit_task_loss(logits, labels, regression).mean(dim=1)
    w = torch.arange(1, per_exit.shape[0] + 1, dtype=per_exit.dtype) if weights is None else weights
    w = w.to(per_exit.device, per_exit.dtype)
    return (w * per_exit).sum() / w.sum()


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    regression: bool = False,
) -> torch.Tensor:
    """Per-exit distillation term [K]: KL(p_T^τ ‖ p_k^τ)·τ², averaged over the batch.

    ``student_logits`` [K, B, C], ``teacher_logits`` [B, C] (detached here: the teacher only teaches).
    KL(teacher ‖ student) is Hinton et al.'s soft-target loss up to the teacher's entropy, a constant,
    so its gradient is the soft-target cross-entropy's, and it is exactly 0 for the teacher's own exit;
    τ² keeps the gradient scale independent of τ. For regression (one output) the analogue is the
    squared difference to the teacher's prediction (τ unused).
    """
    teacher = teacher_logits.detach().float()
    student = student_logits.float()
    if regression:
        return ((student.squeeze(-1) - teacher.squeeze(-1).unsqueeze(0)) ** 2).mean(dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1).unsqueeze(0)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # [K, B]
    return kl.mean(dim=1) * temperature**2


def beem_kd_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    regression: bool = False,
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """BEEM: L_k = CE_k + KD(p_K → p_k), total Σ_k w_k·L_k / Σ_k w_k with w_k = k (the final exit is the
    detached teacher, so its own KD term is 0)."""
    task = per_exit_task_loss(logits, labels, regression).mean(dim=1)
    per_exit = task + kd_loss(logits, logits[-1], temperature, regression)
    w = torch.arange(1, per_exit.shape[0] + 1, dtype=per_exit.dtype) if weights is None else weights
    w = w.to(per_exit.device, per_exit.dtype)
    return (w * per_exit).sum() / w.sum()


def cosee_beta(step: int, total_steps: int, beta0: float) -> float:
    """COSEE eq. 4: β_t = (t / T)·β_0, t the optimisation steps done so far (0 at the first step)."""
    return beta0 * step / max(total_steps, 1)


def swm_weights(exit_slot: torch.Tensor, num_exits: int, beta: float) -> torch.Tensor:
    """COSEE eq. 3: w_n^(m) = softmax over exits m of (−β·|m − m*_n|).

    ``exit_slot`` [T, B] holds each sample's simulated exit (0-based) at each of T thresholds;
    returns [T, B, K], summing to 1 over the last axis. β = 0 gives uniform weights 1/K.
    """
    m = torch.arange(num_exits, device=exit_slot.device, dtype=torch.float32)
    distance = (m - exit_slot.unsqueeze(-1).float()).abs()
    return torch.softmax(-beta * distance, dim=-1)


def swm_loss(per_exit_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """COSEE eq. 2 and 5: mean over the T thresholds of (1/N) Σ_n Σ_m w_n^(m)·CE_n^(m).

    ``per_exit_loss`` [K, B] (per sample, per exit), ``weights`` [T, B, K].
    """
    per_threshold = torch.einsum("tbk,kb->t", weights.to(per_exit_loss.dtype), per_exit_loss)
    return per_threshold.mean() / per_exit_loss.shape[1]


def osc_loss(
    values: torch.Tensor, correct: torch.Tensor, margin: float, confidence_positive: bool
) -> torch.Tensor:
    """COSEE eq. 6–8: (1/(K−1)) Σ_{m<K} max(0, S̄_easy^(m) − S̄_hard^(m) + ε), easy = correct at exit m.

    ``values`` [K, B] exit signals (with gradient), ``correct`` [K, B] bool. For confidence-positive
    signals (max-prob) the sign flips: max(0, S̄_hard − S̄_easy + ε). An exit whose batch holds only
    easy or only hard samples has no mean to compare and contributes 0; the sum is still divided by K−1
    as in eq. 6 (the authors' code divides by the number of exits that had both kinds instead).
    """
    num_exits = values.shape[0]
    if num_exits < 2:
        return values.sum() * 0.0
    v, easy = values[:-1].float(), correct[:-1].to(values.device)
    hard = ~easy
    n_easy, n_hard = easy.sum(1), hard.sum(1)
    mean_easy = (v * easy).sum(1) / n_easy.clamp(min=1)
    mean_hard = (v * hard).sum(1) / n_hard.clamp(min=1)
    gap = mean_hard - mean_easy if confidence_positive else mean_easy - mean_hard
    hinge = torch.clamp(gap + margin, min=0.0) * ((n_easy > 0) & (n_hard > 0))
    return hinge.sum() / (num_exits - 1)


def exit_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[K, B] bool: whether each exit's argmax prediction equals the label."""
    return logits.detach().argmax(-1) == labels.unsqueeze(0)


def learned_exit_targets(
    logits: torch.Tensor, labels: torch.Tensor, regression: bool = False
) -> torch.Tensor:
    """BERxiT's learning-to-exit targets [K, B] in [0, 1]: 1 where the exit's prediction is right.

    For regression, exp(−(ŷ_k − y)²): 1 for an exact prediction, falling with the squared error (the
    BERxiT code's mapping 1 − exp(−err²) of its 'keep going' target, flipped to our confidence direction).
    """
    if regression:
        err = (logits.detach().squeeze(-1).float() - labels.float().unsqueeze(0)) ** 2
        return torch.exp(-err)
    return exit_correct(logits, labels).float()


def learned_exit_loss(
    confidence: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "mse",
    regression: bool = False,
) -> torch.Tensor:
    """Learned-exit head loss, mean over exits and samples: MSE(σ(c), t) (BERxiT) or BCE(c, t).

    ``confidence`` [K, B] raw logits of the per-exit confidence heads; t from :func:`learned_exit_targets`.
    """
    target = learned_exit_targets(logits, labels, regression).to(confidence.device)
    c = confidence.float()
    if kind == "mse":
        return ((torch.sigmoid(c) - target) ** 2).mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(c, target)
    raise ValueError(f"learned-exit loss must be 'mse' or 'bce', got {kind!r}")


# =============================================================================================
# What the trainer drives
# =============================================================================================

LossFn = Callable[[Any, dict[str, torch.Tensor], dict[str, Any]], torch.Tensor]


@dataclass
class Stage:
    """One training stage: which parameters train, with which loss.

    ``trainable(model)`` returns the names of the parameters to train (all others are frozen for the
    stage); ``select_by`` overrides ``TrainConfig.select_by`` for best-epoch selection; ``epochs``
    overrides ``TrainConfig.epochs``.
    """

    name: str
    loss: LossFn
    trainable: Callable[[nn.Module], set[str]] | None = None
    select_by: str | None = None
    epochs: float | None = None
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


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

    def stages(self) -> list[Stage]:
        return [Stage("train", self.loss, forward_kwargs=dict(self.forward_kwargs))]

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
        pass


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
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


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


def describe_schemes() -> str:
    """One line per registered scheme with its options, for ``--help`` texts."""
    lines = []
    for name, cls in SCHEMES.items():
        opts = ", ".join(f"{k}={v!r}" for k, (_, v) in scheme_options(name).items())
        lines.append(f"  {name:<12} {cls.description}" + (f" [{opts}]" if opts else ""))
    return "\n".join(lines)


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
    if cls is SweetConfig:
        base_opts = {k: v for k, v in options.items() if k not in known}
        options = {k: v for k, v in options.items() if k in known}
        if base_opts:
            options["base_options"] = {**options.get("base_options", {}), **base_opts}
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


# -- joint ---------------------------------------------------------------------------------------


class _FnScheme(Scheme):
    def __init__(
        self, config: SchemeConfig, model: nn.Module, fn: Callable[..., torch.Tensor], **kwargs: Any
    ):
        super().__init__(config, model)
        self.fn = fn
        self.kwargs = kwargs

    def task_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        return self.fn(output.logits, batch["labels"], regression=self.regression, **self.kwargs)


@register_scheme
@dataclass
class JointConfig(SchemeConfig):
    """Σ_k CE_k (DeeBERT 'all'; SWEET's Early-Exit baseline)."""

    name: ClassVar[str] = "joint"
    description: ClassVar[str] = "sum of the exits' cross-entropies (DeeBERT 'all', SWEET's baseline)"

    def build(self, model: nn.Module) -> Scheme:
        return _FnScheme(self, model, joint_loss)


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
        return _FnScheme(self, model, weighted_loss, weights=exit_weights(model.exits, self.weight_by))


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
        return _FnScheme(
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
        self._policy: Any = None

    def _simulate(
        self, logits: torch.Tensor, thresholds: torch.Tensor, confidence: torch.Tensor | None
    ) -> torch.Tensor:
        """Exit slots [T, B] from the shared exit-policy code (never a second copy of the rule)."""
        try:
            from .simulate import simulate
            from .policies import get_policy
        except ImportError as exc:  # pragma: no cover - depends on the other modules being present
            raise ImportError(
                "COSEE simulates exits with offramp.policies / offramp.engine, which are missing"
            ) from exc
        if self._policy is None:
            self._policy = get_policy("threshold", signal=self.cfg.signal)
        result = simulate(self._policy, logits, thresholds, confidence=confidence)
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
    def __init__(self, config: TwoStageConfig, model: nn.Module):
        super().__init__(config, model)
        self.cfg = config

    def final_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        return per_exit_task_loss(output.logits[-1:], batch["labels"], self.regression).mean()

    def exits_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        task = joint_loss(output.logits[:-1], batch["labels"], self.regression)
        return task + self.learned_term(output, batch)

    def task_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        raise RuntimeError("two-stage training has two losses; use stages()")

    def stages(self) -> list[Stage]:
        last = self.num_exits - 1
        stage1 = Stage(
            "final-exit", self.final_loss, trainable=lambda m: stage1_parameters(m, last), select_by="last"
        )
        if self.num_exits == 1:
            return [stage1]
        stage2 = Stage(
            "other-exits",
            self.exits_loss,
            trainable=lambda m: stage2_parameters(m, last),
            epochs=self.cfg.stage2_epochs,
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
