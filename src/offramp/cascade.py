"""Multi-Model cascades (SWEET's baseline): independent truncated models run smallest first.

A :class:`CascadeModel` holds K single-exit :class:`MultiExitModel` members of depths l_1 < … < l_K,
each fine-tuned alone. For cached evaluation and simulation it looks like a multi-exit model:
``forward`` returns a :class:`MultiExitOutput` with member k's logits in row k, ``exits`` are the member
depths, and ``config.policy`` holds a calibrated policy. What differs is the cost of exiting at member
k: every member up to k ran, so it is l_1 + … + l_k layers (:attr:`CascadeModel.exit_costs`; SWEET App. A).

On disk: a folder with ``cascade.json``, the tokenizer (once), and ``member-1`` … ``member-K`` written by
``MultiExitModel.save``; written to a temporary sibling folder and renamed into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .backbones import adapter_class
from .io import atomic_dir
from .metrics import ExitCosts
from .model import (
    BACKBONE_ALIASES,
    ExitConfig,
    ExitProperties,
    ModelConfig,
    ModelLoadError,
    MultiExitModel,
    MultiExitOutput,
    check_format_version,
    natural_pooling,
    resolve_backbone,
)

CASCADE_FILE = "cascade.json"
CASCADE_FORMAT_VERSION = 1


@dataclass(kw_only=True)
class CascadeConfig(ModelConfig):
    """What a cascade needs besides its members: the task, the member depths (``exits``), a policy."""

    backbone: str | None = None
    head: str | None = None
    format_version: int = CASCADE_FORMAT_VERSION

    FILE: ClassVar[str] = CASCADE_FILE


class CascadeModel(ExitProperties, nn.Module):
    """K independent single-exit models of increasing depth, evaluated like a K-exit model."""

    is_cascade = True

    def __init__(
        self,
        members: list[MultiExitModel],
        tokenizer: PreTrainedTokenizerBase | None = None,
        config: CascadeConfig | None = None,
    ):
        super().__init__()
        if not members:
            raise ValueError("a cascade needs at least one member")
        for k, member in enumerate(members):
            if member.num_exits != 1:
                raise ValueError(
                    f"cascade member {k + 1} has {member.num_exits} exits; each member has exactly one"
                )
        depths = [m.depth for m in members]
        if any(b <= a for a, b in zip(depths, depths[1:], strict=False)):
            raise ValueError(f"cascade member depths must increase, got {depths}")
        first = members[0].config
        for m in members[1:]:
            if (m.config.num_labels, m.config.problem_type) != (first.num_labels, first.problem_type):
                raise ValueError("cascade members disagree on the number of labels or the problem type")
        self.members = nn.ModuleList(members)
        self.tokenizer = tokenizer if tokenizer is not None else members[0].tokenizer
        self.config = config or CascadeConfig(
            exits=depths,
            num_labels=first.num_labels,
            problem_type=first.problem_type,
            backbone=first.backbone,
            head=first.head,
            learned_exit=all(m.config.learned_exit for m in members),
            label_names=first.label_names,
            task=first.task,
            max_length=first.max_length,
        )
        self.config.exits = depths

    # -- properties (exits, num_exits, depth, is_regression: ExitProperties) --------------------
    @property
    def exit_costs(self) -> ExitCosts:
        """Layers run to answer at member k: l_1 + … + l_k (every earlier member ran too)."""
        return ExitCosts.cascade(self.config.exits)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> MultiExitOutput:
        """Every member on the whole batch: logits [K, B, C], member k in row k (no early exit)."""
        outs = [m(input_ids, attention_mask, token_type_ids) for m in self.members]
        logits = torch.cat([o.logits for o in outs], dim=0)
        confidence = None
        if all(o.confidence is not None for o in outs):
            confidence = torch.cat([o.confidence for o in outs], dim=0)
        return MultiExitOutput(logits=logits, confidence=confidence)

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``cascade.json``, the tokenizer and ``member-k`` folders atomically (temp + rename)."""
        with atomic_dir(directory) as tmp:
            for k, member in enumerate(self.members):
                kept, member.tokenizer = member.tokenizer, None  # one tokenizer copy, at the root
                try:
                    member.save(tmp / f"member-{k + 1}")
                finally:
                    member.tokenizer = kept
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
            (tmp / CASCADE_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> CascadeModel:
        """Load a folder written by :meth:`save`."""
        folder = Path(directory)
        if not (folder / CASCADE_FILE).is_file():
            raise ModelLoadError(
                f"{str(folder)!r} has no {CASCADE_FILE}; is it a cascade folder written by save()?"
            )
        try:
            config = CascadeConfig.from_dict(json.loads((folder / CASCADE_FILE).read_text()))
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"corrupt {CASCADE_FILE} in {str(folder)!r}: {exc}") from exc
        check_format_version(f"cascade {str(folder)!r}", config.format_version, CASCADE_FORMAT_VERSION)
        members = []
        for k in range(len(config.exits)):
            sub = folder / f"member-{k + 1}"
            if not sub.is_dir():
                raise ModelLoadError(
                    f"cascade {str(folder)!r} lists {len(config.exits)} members but has no {sub.name}"
                )
            members.append(MultiExitModel.load(sub, device=device))
        tokenizer = None
        if (folder / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        for m in members:
            m.tokenizer = tokenizer
        return cls(members, tokenizer, config).to(device).eval()


def load_any(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> MultiExitModel | CascadeModel:
    """Load a model folder of any kind: an ONNX export (has ``onnx_export.json``; CPU, run by ONNX
    Runtime), a cascade (has ``cascade.json``) or a multi-exit model."""
    from .exported import ExportedModel, is_export_folder

    if is_export_folder(directory):
        return ExportedModel.load(directory).to(device)
    if (Path(directory) / CASCADE_FILE).is_file():
        return CascadeModel.load(directory, device=device)
    return MultiExitModel.load(directory, device=device)


# ---------------------------------------------------------------------------------------------
# Building members
# ---------------------------------------------------------------------------------------------


def truncate_backbone(model: MultiExitModel, depth: int) -> MultiExitModel:
    """Drop the backbone layers after ``depth`` (in place), so a member stores only what it runs.

    Works for families whose layers are distinct modules in one ``ModuleList`` (BERT, RoBERTa,
    ELECTRA, DistilBERT, MPNet, DeBERTa-v2); the backbone config's layer count is updated so the saved
    folder reloads at that depth. Families that share weights across layers (ALBERT) are left whole
    (their extra layers are simply never run); see ``BackboneAdapter.truncate``.
    """
    if model.depth <= depth:
        model.adapter.truncate(depth)
    return model


def truncated_member(
    backbone: str, num_labels: int, depth: int, head: str = "auto", **config_kwargs: Any
) -> MultiExitModel:
    """A pre-trained encoder cut to its first ``depth`` layers with one exit after layer ``depth``."""
    path = resolve_backbone(backbone)
    try:
        config = AutoConfig.from_pretrained(path)
        if depth > config.num_hidden_layers:
            raise ValueError(f"member depth {depth} exceeds the backbone's {config.num_hidden_layers} layers")
        family = adapter_class(getattr(config, "model_type", None))
        if family is not None and not family.shares_layers:
            config.num_hidden_layers = depth
        encoder = AutoModel.from_pretrained(path, config=config, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load backbone {backbone!r}: not a local folder with a model, a known alias "
            f"({', '.join(BACKBONE_ALIASES)}), or a reachable hub name ({exc.__class__.__name__})"
        ) from exc
    if head == "auto":
        head = natural_pooling(path)
    exit_config = ExitConfig(
        backbone=backbone, num_labels=num_labels, exits=[depth], head=head, **config_kwargs
    )
    model = MultiExitModel(exit_config, encoder, tokenizer)
    model._init_pooler_heads()
    return model
