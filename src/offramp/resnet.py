"""The CIFAR ResNet (He et al. 2016, §4.2) in plain torch, and its early-exit adapter.

No Hugging Face class exists for it, so the network is written here: a 3x3 conv stem (16 channels,
stride 1) + BatchNorm + ReLU, then 3 stages of ``n`` BasicBlocks with 16/32/64 channels (stride 2 at the
first block of stages 2 and 3); depth = 6n + 2 (ResNet-56: n = 9, 27 blocks). Shortcuts are option A by
default (parameter-free: subsample by 2 and zero-pad the new channels, as in the paper's CIFAR runs and
PABEE's ResNet-56); option B (1x1 conv + BN projection) on request. ``in_channels`` is 1 for MNIST.

Each residual block is one "layer" for early exit (PCEE-BERT §4.6.4 and PABEE put an exit after every
block, i.e. every two conv layers). :class:`ResNetAdapter` follows the image contract of
:mod:`offramp.backbones`: ``embed_pixels`` runs the stem, ``run_layer(i, ...)`` block ``i``, and the
live runtime compacts a [B, C, H, W] batch by dropping rows (BatchNorm in eval mode keeps rows
independent). Backbone names: ``resnet56-cifar`` (any ``resnet{6n+2}-cifar``, e.g. ``resnet20-cifar``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneAdapter, register_adapter

MODEL_TYPE = "cifar-resnet"
STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("A", "B")
_NAME = re.compile(r"^resnet(\d+)-cifar$")


@dataclass
class ResNetConfig:
    """What builds a :class:`CifarResNet`; written to ``backbone_config.json`` beside the weights."""

    depth: int = 56
    in_channels: int = 3
    shortcut: str = "A"
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(
                f"CIFAR ResNet depth {self.depth!r}: expected 6n + 2 with n >= 1 (20, 32, 56, ...)"
            )
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"in_channels {self.in_channels!r}: expected a positive integer (3 RGB, 1 grey)")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut {self.shortcut!r}: expected one of {SHORTCUTS}")
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"model_type {self.model_type!r}: expected {MODEL_TYPE!r}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def num_hidden_layers(self) -> int:
        """Residual blocks: the layers exits may follow (27 for ResNet-56)."""
        return 3 * self.blocks_per_stage

    @property
    def hidden_size(self) -> int:
        """Channels of the last block's output."""
        return STAGE_WIDTHS[-1]

    def width(self, layer: int) -> int:
        """Channels after block ``layer`` (1-based): 16, 32 or 64 by stage."""
        if not 1 <= layer <= self.num_hidden_layers:
            raise ValueError(
                f"layer {layer} out of range: this ResNet has blocks 1..{self.num_hidden_layers}"
            )
        return STAGE_WIDTHS[(layer - 1) // self.blocks_per_stage]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown CIFAR ResNet config fields {unknown}; expected some of {sorted(known)}"
            )
        return cls(**data)


def parse_backbone_name(name: str) -> int | None:
    """The depth in ``resnet56-cifar`` style names, None for any other name."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, ReLU between and after the residual sum (He et al. 2016, Fig. 2)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - in_planes
        self.project: nn.Module | None = None
        if shortcut == "B" and (stride != 1 or in_planes != planes):
            self.project = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            return self.project(x)
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]  # option A: subsample, zero-pad the new channels
        half = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@dataclass
class ResNetOutput:
    """``last_hidden_state``: the last block's feature map [B, 64, H', W'] (named as in transformers)."""

    last_hidden_state: torch.Tensor


class CifarResNet(nn.Module):
    """Stem + ``3n`` BasicBlocks, no classifier (the exit heads classify); ``config`` like an HF model."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(config.in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(STAGE_WIDTHS[0])
        blocks, in_planes = [], STAGE_WIDTHS[0]
        for stage, planes in enumerate(STAGE_WIDTHS):
            for b in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, config.shortcut))
                in_planes = planes
        self.blocks = nn.ModuleList(blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stem(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.in_channels:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)}: "
                f"expected [B, {self.config.in_channels}, H, W]"
            )
        return F.relu(self.bn(self.conv(pixel_values)))

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> ResNetOutput:
        hidden = self.stem(pixel_values)
        for block in self.blocks:
            hidden = block(hidden)
        return ResNetOutput(hidden)


class ResNetAdapter(BackboneAdapter):
    """The image contract for :class:`CifarResNet`: stem, one block per layer, no masks, no trimming."""

    model_types: ClassVar[tuple[str, ...]] = (MODEL_TYPE,)
    trim_safe: ClassVar[bool] = False

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def truncate(self, depth: int) -> bool:
        """Blocks after ``depth`` are simply never run (the config's depth stays the built one)."""
        return False

    def exit_width(self, layer: int) -> int:
        """Channels an exit after ``layer`` (1-based) pools: 16, 32 or 64."""
        return self.config.width(layer)

    def layers(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def layer_module(self, index: int) -> nn.Module:
        return self.model.blocks[index]

    def embed(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise TypeError("a CIFAR ResNet takes images: call embed_pixels(pixel_values), not token ids")

    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The stem's output [B, 16, H, W]: the hidden state entering block 1."""
        return self.model.stem(pixel_values)

    def layer_context(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, Any]:
        return {}

    def run_layer(self, index: int, hidden: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        return self.model.blocks[index](hidden)

    def pooler(self) -> nn.Module | None:
        return None


register_adapter(ResNetAdapter)


def build_resnet(name: str, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """A freshly initialised CIFAR ResNet from a name such as ``resnet56-cifar``."""
    depth = parse_backbone_name(name)
    if depth is None:
        raise ValueError(f"backbone {name!r}: expected a CIFAR ResNet name like 'resnet56-cifar'")
    return CifarResNet(ResNetConfig(depth=depth, in_channels=in_channels, shortcut=shortcut))


def backbone_from_config_dict(data: dict[str, Any]) -> CifarResNet | None:
    """Rebuild a saved backbone from its ``backbone_config.json`` dict; None when it is not a CIFAR ResNet."""
    if data.get("model_type") != MODEL_TYPE:
        return None
    return CifarResNet(ResNetConfig.from_dict(data))
