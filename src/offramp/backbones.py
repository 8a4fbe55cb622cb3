"""Family adapters: run a stock Hugging Face encoder one layer at a time.

An adapter exposes exactly what early exit needs and nothing else:

* ``embed(input_ids, attention_mask, token_type_ids)`` -> hidden states entering layer 1;
* ``layer_context(hidden, attention_mask)`` -> whatever the layers need besides the hidden states
  (the 4-D attention mask, relative-position tensors, ...), built from the 2-D padding mask of the
  rows still running, so the live runtime can rebuild it after dropping exited rows;
* ``run_layer(index, hidden, context)`` -> hidden states after layer ``index`` (0-based).

``num_layers`` counts layer *applications*: for ALBERT, whose layers share weights, it is
``num_hidden_layers`` and an exit may follow each application. No modelling code is copied: the
adapters call the stock modules of the installed transformers version.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.masking_utils import create_bidirectional_mask


class UnsupportedBackboneError(ValueError):
    """The encoder's architecture has no adapter."""


def _first(output: Any) -> torch.Tensor:
    """Layers return a tensor or a tuple whose first item is the hidden states."""
    return output[0] if isinstance(output, (tuple, list)) else output


class BackboneAdapter:
    """Base adapter for encoders laid out like BERT: ``embeddings`` then ``encoder.layer[i]``."""

    model_types: ClassVar[tuple[str, ...]] = ()
    #: Layers mix positions only through masked attention (absolute positions are added once in the
    #: embeddings; relative ones depend on i - j only), so dropping trailing all-padding columns after
    #: compaction leaves every real token's output unchanged (the runtime trims them when True).
    trim_safe: ClassVar[bool] = True
    #: One set of layer weights applied at every depth (ALBERT): a member cannot be cut shorter.
    shares_layers: ClassVar[bool] = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    def truncate(self, depth: int) -> bool:
        """Drop the layer modules after ``depth`` in place (and the config's layer count); False if it can't.

        Finds the ``ModuleList`` holding exactly :meth:`layers`, so it works for every family whose layers
        are distinct modules; adapters with shared layers keep them all (the extra ones are never run).
        """
        layers = self.layers()
        if self.shares_layers or depth >= self.num_layers or len(layers) != self.num_layers:
            return False
        for parent in self.model.modules():
            for name, child in parent.named_children():
                if (
                    isinstance(child, nn.ModuleList)
                    and len(child) == len(layers)
                    and all(a is b for a, b in zip(child, layers, strict=True))
                ):
                    setattr(parent, name, nn.ModuleList(list(child)[:depth]))
                    self.config.num_hidden_layers = depth
                    return True
        return False

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def layers(self) -> list[nn.Module]:
        """The distinct layer modules (shared ones listed once)."""
        return list(self.model.encoder.layer)

    def layer_module(self, index: int) -> nn.Module:
        """The module applied at layer ``index`` (0-based)."""
        return self.model.encoder.layer[index]

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None and getattr(self.config, "type_vocab_size", 0) > 0:
            kwargs["token_type_ids"] = token_type_ids
        return self.model.embeddings(**kwargs)

    def layer_context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        return {"mask": mask}

    def run_layer(self, index: int, hidden: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        return _first(self.layer_module(index)(hidden, context["mask"]))

    def pooler(self) -> nn.Module | None:
        """The checkpoint's own pooler (dense + tanh), if it has one; used to initialise pooler heads."""
        return getattr(self.model, "pooler", None)

    def forward_all(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Hidden states after every layer application, computed layer by layer."""
        hidden = self.embed(input_ids, attention_mask, token_type_ids)
        context = self.layer_context(hidden, attention_mask)
        states = []
        for i in range(self.num_layers):
            hidden = self.run_layer(i, hidden, context)
            states.append(hidden)
        return states


class BertAdapter(BackboneAdapter):
    """BERT, RoBERTa, ELECTRA and other BERT-layout encoders (the stock ``*Layer`` modules)."""

    model_types = ("bert", "roberta", "electra", "xlm-roberta", "camembert")

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stock embeddings, plus ELECTRA's ``embeddings_project`` when ``embedding_size != hidden_size``."""
        hidden = super().embed(input_ids, attention_mask, token_type_ids)
        project = getattr(self.model, "embeddings_project", None)
        return project(hidden) if project is not None else hidden


class AlbertAdapter(BackboneAdapter):
    """ALBERT: ``num_hidden_layers`` applications of ``num_hidden_groups`` weight-shared layer groups.

    One layer application is one ``AlbertLayerGroup`` call (``inner_group_num`` stock ``AlbertLayer``
    modules), so an exit may follow each of the ``num_hidden_layers`` applications, exactly the steps of the
    stock ``AlbertTransformer`` loop, never in the middle of a group.
    """

    model_types = ("albert",)
    shares_layers = True

    def group_index(self, index: int) -> int:
        """The layer group applied at step ``index``: the stock ``AlbertTransformer`` formula, verbatim."""
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer index {index} out of range for {self.num_layers} layer applications")
        cfg = self.config
        return int(index / (cfg.num_hidden_layers / cfg.num_hidden_groups))

    def layers(self) -> list[nn.Module]:
        """The distinct (weight-shared) layer groups, each listed once."""
        return list(self.model.encoder.albert_layer_groups)

    def layer_module(self, index: int) -> nn.Module:
        """The layer group applied at step ``index`` (the same module object for every step of a group)."""
        return self.model.encoder.albert_layer_groups[self.group_index(index)]

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stock embeddings (``embedding_size`` wide) mapped to ``hidden_size`` by the encoder's input map."""
        hidden = super().embed(input_ids, attention_mask, token_type_ids)
        return self.model.encoder.embedding_hidden_mapping_in(hidden)

    def pooler(self) -> nn.Module | None:
        """ALBERT's dense + tanh as ``nn.Sequential(dense=..., activation=...)``, or None without a pooler.

        Unlike ``BertPooler`` it maps the first-token vector ``[B, H]``, not the whole sequence ``[B, L, H]``
        (the stock ``AlbertModel`` slices ``[:, 0]`` before calling ``model.pooler``).
        """
        dense = getattr(self.model, "pooler", None)
        if dense is None:
            return None
        return nn.Sequential(OrderedDict(dense=dense, activation=self.model.pooler_activation))


class DistilBertAdapter(BackboneAdapter):
    """DistilBERT: ``embeddings`` (no token types) then ``transformer.layer[i]``; no pooler."""

    model_types = ("distilbert",)

    def layers(self) -> list[nn.Module]:
        """The ``TransformerBlock`` modules (DistilBERT names its encoder ``transformer``)."""
        return list(self.model.transformer.layer)

    def layer_module(self, index: int) -> nn.Module:
        """The ``TransformerBlock`` applied at layer ``index``."""
        return self.model.transformer.layer[index]

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Word + position embeddings; DistilBERT has no token types, so ``token_type_ids`` is ignored."""
        return self.model.embeddings(input_ids=input_ids)

    def pooler(self) -> nn.Module | None:
        """DistilBERT checkpoints carry no pooler."""
        return None


class MPNetAdapter(BackboneAdapter):
    """MPNet: BERT layout, plus a relative-position bias shared by all layers (computed by the encoder)."""

    model_types = ("mpnet",)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stock embeddings; positions come from ``input_ids`` (pad id 1), MPNet has no token types."""
        return self.model.embeddings(input_ids=input_ids)

    def layer_context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        """The 4-D mask and the stock ``compute_position_bias`` (it depends on batch size and length only)."""
        context = super().layer_context(hidden, attention_mask)
        context["position_bias"] = self.model.encoder.compute_position_bias(hidden)
        return context

    def run_layer(self, index: int, hidden: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        """One stock ``MPNetLayer`` with the shared position bias."""
        return _first(self.layer_module(index)(hidden, context["mask"], context["position_bias"]))


class DebertaV2Adapter(BackboneAdapter):
    """DeBERTa-v2/v3: disentangled relative attention, and (v2) a ConvLayer after the first layer.

    When ``conv_kernel_size > 0`` the stock encoder replaces the output of layer 1 by
    ``ConvLayer(embeddings, layer_1_output, input_mask)`` (LayerNorm of the output plus an activated conv of
    the *embeddings*, times the mask). Here that is part of ``run_layer(0, ...)``, whose input is the
    embedding output, so an exit after layer 1 sees the stock model's ``hidden_states[1]``.
    """

    model_types = ("deberta-v2",)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stock embeddings, given the 2-D mask as ``DebertaV2Model`` does (they zero padded positions)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=attention_mask)

    def layer_context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        """The stock encoder's pairwise mask, relative positions and relative embeddings, plus the 2-D mask.

        A boolean mask is cast to integers first: the stock ConvLayer computes ``1 - input_mask``, which torch
        refuses for bool tensors (same 0/1 values, so results are unchanged).
        """
        encoder = self.model.encoder
        if attention_mask.dtype == torch.bool:
            attention_mask = attention_mask.long()
        return {
            "mask": encoder.get_attention_mask(attention_mask),
            "input_mask": attention_mask,
            "relative_pos": encoder.get_rel_pos(hidden),
            "rel_embeddings": encoder.get_rel_embedding(),
        }

    def run_layer(self, index: int, hidden: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        """One stock ``DebertaV2Layer``; after the first one, the encoder's ConvLayer if it has one."""
        output = _first(
            self.layer_module(index)(
                hidden,
                context["mask"],
                relative_pos=context["relative_pos"],
                rel_embeddings=context["rel_embeddings"],
            )
        )
        conv = self.model.encoder.conv
        if index == 0 and conv is not None:
            output = conv(hidden, output, context["input_mask"])
        return output

    def pooler(self) -> nn.Module | None:
        """``DebertaV2Model`` has no pooler (``ContextPooler`` lives on the task models)."""
        return None


class ViTAdapter(BackboneAdapter):
    """Vision Transformer (stock ``ViTModel``): patch + CLS embeddings, then ``layers[i]``; images only.

    Follows the image contract (``embed_pixels``, no attention mask, rows compacted with
    ``index_select``). ViT is pre-LayerNorm: the stock model normalises the last layer's output with
    ``model.layernorm`` before ``last_hidden_state`` and the pooler, so ``run_layer`` applies that
    LayerNorm after the backbone's final layer, and the last exit sees exactly ``last_hidden_state``
    (a ``pooler`` head starts from the stock pooler, so it reproduces ``pooler_output``). Earlier exits
    see the residual stream after their layer, as the stock ``hidden_states`` outputs do.
    """

    model_types = ("vit",)
    trim_safe = False  # no padding to trim: every token is a patch (or CLS)

    def layers(self) -> list[nn.Module]:
        """The stock ``ViTLayer`` modules."""
        return list(self.model.layers)

    def layer_module(self, index: int) -> nn.Module:
        """The ``ViTLayer`` applied at layer ``index``."""
        return self.model.layers[index]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the position embeddings were made for."""
        size = self.config.image_size
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def num_channels(self) -> int:
        """Colour channels of the input images."""
        return int(self.config.num_channels)

    def embed(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """ViT takes images: use :meth:`embed_pixels`."""
        raise TypeError("a ViT takes images: call embed_pixels(pixel_values), not token ids")

    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLS + patch embeddings with positions, [B, 1 + patches, hidden]: the input of layer 1."""
        weight = self.model.embeddings.patch_embeddings.projection.weight
        return self.model.embeddings(pixel_values.to(weight.dtype))

    def layer_context(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, Any]:
        """No mask: every row attends to all of its own patches."""
        return {"mask": None}

    def run_layer(self, index: int, hidden: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        """One stock ``ViTLayer``; after the backbone's last one, the stock final LayerNorm too."""
        hidden = _first(self.layer_module(index)(hidden, None))
        return self.model.layernorm(hidden) if index == self.num_layers - 1 else hidden


ADAPTERS: dict[str, type[BackboneAdapter]] = {}


def register_adapter(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Register an adapter class for each of its ``model_types``."""
    for model_type in cls.model_types:
        ADAPTERS[model_type] = cls
    return cls


register_adapter(BertAdapter)
register_adapter(AlbertAdapter)
register_adapter(DistilBertAdapter)
register_adapter(MPNetAdapter)
register_adapter(DebertaV2Adapter)
register_adapter(ViTAdapter)


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_class(model_type: str | None) -> type[BackboneAdapter] | None:
    """The adapter class registered for a transformers ``model_type`` (None when unsupported)."""
    return ADAPTERS.get(model_type or "")


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """The adapter for a stock Hugging Face encoder (an ``AutoModel``, not a task model)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedBackboneError(
            f"unsupported backbone architecture {model_type!r}; supported model types: "
            + ", ".join(supported_model_types())
        )
    return ADAPTERS[model_type](model)


_TINY_COMMON: dict[str, Any] = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
}

_TINY_FAMILY: dict[str, dict[str, Any]] = {
    "bert": {"type_vocab_size": 2},
    "roberta": {"type_vocab_size": 1, "pad_token_id": 1},
    "xlm-roberta": {"type_vocab_size": 1, "pad_token_id": 1},
    "camembert": {"type_vocab_size": 1, "pad_token_id": 1},
    # embedding_size != hidden_size exercises ELECTRA's embeddings_project.
    "electra": {"embedding_size": 16, "type_vocab_size": 2},
    # 4 applications of 2 weight-shared groups; embedding_size != hidden_size exercises the input map.
    "albert": {
        "embedding_size": 16,
        "num_hidden_layers": 4,
        "num_hidden_groups": 2,
        "num_attention_heads": 2,
    },
    "mpnet": {"num_attention_heads": 2},
    "deberta-v2": {
        "num_attention_heads": 2,
        "type_vocab_size": 2,
        "relative_attention": True,
        "position_buckets": 8,
        "pos_att_type": ["p2c", "c2p"],
        "norm_rel_ebd": "layer_norm",
        "conv_kernel_size": 3,
        "layer_norm_eps": 1e-7,
    },
}


#: Randomly initialised ViT sizes by name: (hidden size, layers, heads, MLP size). ``vit-tiny`` and
#: ``vit-small`` are DeiT-Tiny/Small; ``vit-micro`` is small enough to train on a CPU in minutes.
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "vit-micro": (64, 6, 4, 128),
    "vit-tiny": (192, 12, 3, 768),
    "vit-small": (384, 12, 6, 1536),
}


def vit_patch_size(image_size: tuple[int, int]) -> int:
    """The largest patch side of 16, 8, 7, 4, 2, 1 dividing both sides that still gives >= 49 patches."""
    h, w = image_size
    for p in (16, 8, 7, 4, 2):
        if h % p == 0 and w % p == 0 and (h // p) * (w // p) >= 49:
            return p
    return 1


def vit_backbone(name: str, image_size: tuple[int, int], num_channels: int) -> nn.Module:
    """A fresh ``ViTModel`` of a :data:`VIT_SIZES` name for images of ``image_size`` (H, W).

    Images must be square (the stock ViT takes one ``image_size``); the patch side is
    :func:`vit_patch_size`.
    """
    from transformers import ViTConfig, ViTModel

    if name not in VIT_SIZES:
        raise UnsupportedBackboneError(f"ViT size {name!r}: expected one of {', '.join(VIT_SIZES)}")
    h, w = (int(image_size[0]), int(image_size[1]))
    if h != w:
        raise UnsupportedBackboneError(f"images of {h}x{w}: a ViT backbone expects square images")
    hidden, layers, heads, mlp = VIT_SIZES[name]
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        image_size=h,
        patch_size=vit_patch_size((h, w)),
        num_channels=int(num_channels),
    )
    return ViTModel(config)


def tiny_config(model_type: str, **overrides: Any) -> PretrainedConfig:
    """A tiny random-weight config for a supported family, for tests and smoke runs without downloads.

    ``overrides`` replace any field (e.g. ``share_att_key=True`` for a DeBERTa-v3-style config).
    """
    if model_type == "distilbert":
        kwargs: dict[str, Any] = {
            "vocab_size": 99,
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dim": 37,
            "max_position_embeddings": 64,
        }
    elif model_type == "vit":  # 8x8 grey images (sklearn digits): 4 patches of 4x4, plus CLS
        kwargs = {
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "image_size": 8,
            "patch_size": 4,
            "num_channels": 1,
        }
    elif model_type in _TINY_FAMILY:
        kwargs = {**_TINY_COMMON, **_TINY_FAMILY[model_type]}
    else:
        raise UnsupportedBackboneError(
            f"no tiny config for model type {model_type!r}; supported model types: "
            + ", ".join(supported_model_types())
        )
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)
