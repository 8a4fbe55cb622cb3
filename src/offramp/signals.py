"""Exit signals: pure, vectorised functions of an exit's logits (and learned-exit logit).

Each signal says which way is confident: difficulty-positive signals (entropy, energy) exit when the
value is *below* the threshold; confidence-positive ones (max-prob, learned) exit when it is
*at or above*. Policies, calibration and COSEE training all call these same functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Signal:
    """A named signal. ``fn(logits, confidence_logit)`` -> values with the logits' leading shape."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    confidence_positive: bool
    #: Natural value range when bounded (used to draw thresholds), else None.
    bounds: tuple[float, float] | None
    description: str
    #: The same values from ``softmax(logits.float())`` when the caller already has it (bit-identical to
    #: ``fn``), so a policy step does not compute the softmax twice; None: the signal needs the logits.
    from_probs: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, logits: torch.Tensor, confidence: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(logits, confidence)

    def passes(self, values: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
        """True where the value is confident enough to exit at ``threshold``."""
        return values >= threshold if self.confidence_positive else values < threshold


def max_prob(logits: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    """max_c p_c (Shallow-Deep, RightTool, SWEET)."""
    return max_of_probs(logits.float().softmax(-1))


def max_of_probs(probs: torch.Tensor) -> torch.Tensor:
    """max_c p_c from the probabilities themselves."""
    return probs.amax(-1)


def entropy(logits: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    """H(p) = -Σ p log p in nats (DeeBERT, BranchyNet)."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def normalized_entropy(logits: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    """H(p) / log C, in [0, 1] (FastBERT; PCEE eq. 2)."""
    num_classes = logits.shape[-1]
    return entropy(logits) / math.log(num_classes) if num_classes > 1 else torch.zeros(logits.shape[:-1])


def energy(logits: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    """E = -logsumexp(z) (COSEE eq. 10): lower is more confident."""
    return -torch.logsumexp(logits.float(), dim=-1)


def normalized_energy(logits: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    """sigmoid(E) = (1 + exp(-E))^-1, in (0, 1) (COSEE eq. 11)."""
    return torch.sigmoid(energy(logits))


def learned(_: torch.Tensor, confidence: torch.Tensor | None) -> torch.Tensor:
    """sigmoid of the exit's learned-confidence logit (BERxiT learning-to-exit; PCEE-v2)."""
    if confidence is None:
        raise ValueError(
            "the 'learned' signal needs a model trained with learned-exit heads (learned_exit=True)"
        )
    return torch.sigmoid(confidence.float())


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal(
            "maxprob",
            max_prob,
            True,
            (0.0, 1.0),
            "maximum class probability; exit when >= threshold",
            from_probs=max_of_probs,
        ),
        Signal("entropy", entropy, False, None, "entropy of p in nats; exit when < threshold"),
        Signal(
            "norm_entropy", normalized_entropy, False, (0.0, 1.0), "entropy / log C; exit when < threshold"
        ),
        Signal("energy", energy, False, None, "-logsumexp(logits); exit when < threshold"),
        Signal("norm_energy", normalized_energy, False, (0.0, 1.0), "sigmoid(energy); exit when < threshold"),
        Signal("learned", learned, True, (0.0, 1.0), "learned-exit head probability; exit when >= threshold"),
    )
}


def get_signal(name: str) -> Signal:
    """Look a signal up by name, with an error listing the known ones."""
    try:
        return SIGNALS[name]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}; expected one of {', '.join(SIGNALS)}") from None
