"""Post-training int8 for early exit: torch dynamic quantization of the layers and heads a model runs.

Why: early exit saves layers, int8 makes each layer cheaper; the two stack (issue 13's measurements:
torch int8 + early exit beat either alone on CPU). :func:`quantize_model` returns a quantized copy that
the live runtime, :func:`~offramp.evaluate.collect_exit_outputs` and the benchmark run unchanged.

Dynamic quantization stores the ``nn.Linear`` weights as int8 and computes each activation's scale from
the tensor it sees, i.e. per batch (over every row and token of it): the same input may give slightly
different logits depending on which rows share its batch, and the runtime drops exited rows between
layers. Exactness between the live runtime and simulation over cached outputs therefore holds only for
the same batching (e.g. batch size 1); other batchings agree up to quantization noise.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from .cascade import CascadeModel

#: Quantization modes accepted by :func:`quantize_model` (and ``--quantize``).
QUANTIZE_MODES = ("int8",)


def check_mode(mode: str) -> str:
    """``mode`` if it is a known quantization mode; else a ValueError naming it and the choices."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; expected one of {', '.join(QUANTIZE_MODES)}")
    return mode


def _quantize_inplace(module: nn.Module) -> None:
    """Swap every ``nn.Linear`` below ``module`` for a dynamically quantized int8 one, in place."""
    torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def _quantize_member(member: nn.Module) -> None:
    """Quantize one MultiExitModel's encoder layers and exit heads in place (embeddings stay fp32)."""
    seen: set[int] = set()
    for layer in [*member.adapter.layers(), *member.heads]:
        if id(layer) not in seen:  # ALBERT repeats one layer module
            seen.add(id(layer))
            _quantize_inplace(layer)


def quantize_model(model: Any, mode: str = "int8") -> Any:
    """A quantized copy of a MultiExitModel or CascadeModel (every member); ``model`` is left untouched.

    ``int8``: torch dynamic quantization (int8 weights, per-batch activation scales) of the linear
    layers of the encoder layers and the exit heads. CPU only. See the module docstring for what dynamic
    quantization means for exactness.
    """
    check_mode(mode)
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"--quantize {mode} runs on the CPU only; the model is on {device}")
    quantized = copy.deepcopy(model).eval()
    members = list(quantized.members) if isinstance(quantized, CascadeModel) else [quantized]
    with warnings.catch_warnings():
        # torch deprecates torch.ao.quantization and quantized tensor creation; noise for users here.
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation", category=UserWarning)
        for member in members:
            _quantize_member(member)
    quantized.quantization = mode
    _use_runtime_policy(quantized, mode)
    return quantized


def _use_runtime_policy(model: Any, mode: str) -> None:
    """Make the policy calibrated on this runtime's outputs (``config.runtime_policies[mode]``), when
    there is one, the quantized copy's default: int8 shifts confidences, so the fp32 threshold drifts."""
    saved = getattr(model.config, "runtime_policies", None) or {}
    if mode in saved:
        model.config.policy = saved[mode]


def quantization_of(model: Any) -> str | None:
    """The mode :func:`quantize_model` applied to ``model`` (None for a model it did not quantize)."""
    return getattr(model, "quantization", None)
