"""Training objectives of multi-exit models: each one formula from a paper, as a pure function.

Inputs are stacked exit outputs (``logits`` [K, B, C], ``labels`` [B]), so every formula can be checked
by hand: :func:`joint_loss` (DeeBERT), :func:`weighted_loss` (PABEE, PCEE-BERT), :func:`beem_kd_loss`
(BEEM), :func:`swm_weights` / :func:`swm_loss` / :func:`osc_loss` (COSEE), :func:`learned_exit_loss`
(BERxiT), :func:`teacher_kd_loss` (distillation from an external fine-tuned teacher). Which formula
trains which parameters, and when, is a scheme (:mod:`offramp.schemes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def teacher_kd_loss(
    scheme_loss: torch.Tensor,
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    exit_weights: torch.Tensor,
    weight: float = 0.5,
    temperature: float = 2.0,
    regression: bool = False,
) -> torch.Tensor:
    """(1 − W)·L_scheme + W·Σ_k ω_k·KD_k, KD_k = KL(p_teacher^τ ‖ p_k^τ)·τ² (:func:`kd_loss`).

    ``logits`` [K, B, C] the student's exits, ``teacher_logits`` [B, C] an external teacher's (detached),
    ``exit_weights`` ω [K] how the scheme itself combines its exits (1 each for Σ_k CE_k, w_k/Σw for the
    weighted mean, 0 for exits a stage does not train), so for ``joint`` this is exactly
    Σ_k [(1 − W)·CE_k + W·KD_k]: every exit's loss mixed with its distillation term. Regression: KD_k
    is the squared difference to the teacher's prediction (τ unused).
    """
    kd = kd_loss(logits, teacher_logits, temperature, regression)
    mix = exit_weights.to(kd.device, kd.dtype)
    return (1.0 - weight) * scheme_loss + weight * (mix * kd).sum()


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
