"""Export a multi-exit model to ONNX: one graph per block, run by ONNX Runtime under the early-exit loop.

Why per block: issue 13 measured one ONNX Runtime int8 graph per layer, driven by the live runtime's
policy loop (exited rows dropped between layers), as the fastest CPU path; early exit and int8 stack.
:func:`export_onnx` writes a folder that :class:`~offramp.exported.ExportedModel` loads without torch
weights (format in :mod:`offramp.exported`): the embeddings, the attention context, each layer up to the
last exit, each exit head, and (unless ``stock=False``) the whole backbone as one graph, the full-model
baseline ``offramp bench`` times. :func:`export_full_onnx` writes the whole model (backbone + final
head -> logits) as one graph.

Graphs are traced by the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): with torch 2.13
and transformers 5 it traces every supported family's stock layers, SDPA attention included, into plain
ONNX ops with dynamic batch and sequence axes, and needs only ``onnx`` (the dynamo exporter would add
onnxscript; every family round-trips to 1e-6 with the TorchScript one, so it was not needed). Tracing
uses a batch with padding, so the masked-attention branch is the one kept.
``context.onnx`` is the adapter's ``layer_context`` (the 4-D attention mask, MPNet's position bias,
DeBERTa's relative positions) from ``(hidden, attention_mask)``; the runtime calls it once per batch and
again only after dropping rows, and every layer graph takes ``hidden`` plus those tensors. (A first
version rebuilt the mask inside every layer graph: measured on MiniLM-L6 int8, that shape plumbing cost
0.27 ms per input at batch 1, 24 tokens, about 10% of the whole model.) ``embed.onnx`` returns the same
context tensors after the hidden states, so a batch starts with one session run, not two.

What a block costs (issue 13, MiniLM-L6 SST-2 int8, 1 thread, SST-2 dev, batch 1, early exit at 3.1 of 6
layers): 1.62 ms/input, of which ~1.3 ms inside ONNX Runtime and ~0.4 ms of Python (policy step ~0.18,
adapter ~0.1, loop ~0.1). A session run costs ~15 us beyond its kernels (a head: 17 us), and the layers'
optimised graphs are the same nodes as the single graph's (318 vs 308), so per-block ORT time is close to
proportional. Also tried and not kept: fusing each exit head into its layer's graph (early exit -2% at
batch 1, but +3-4% whenever the policy skips heads, e.g. ``budget``, since ONNX Runtime runs every node
whatever outputs are asked for); ``run``'s private fast path (3-4 us per call). What did pay: running
the whole early-exit forward as ONE graph composed from these blocks at load time (:mod:`offramp.fused`;
1.26 vs 1.67 ms/input at batch 1), which threshold and budget policies now use.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .exported import (
    CONTEXT_FILE,
    CONTEXT_PREFIX,
    EMBED_FILE,
    MANIFEST_FILE,
    STOCK_FILE,
    ExportManifest,
    head_file,
    layer_file,
    ort_session,
    sha256_of,
)

__all__ = ["export_onnx", "export_full_onnx", "ort_session", "quantize_graph", "ExportResult"]
from .io import atomic_dir, replace_file_atomic, tree_size
from .model import BACKBONE_CONFIG_FILE, CONFIG_FILE, MultiExitModel

#: Opset of the exported graphs (ONNX Runtime 1.16+ runs it; LayerNormalization is a single op from 17).
DEFAULT_OPSET = 17
#: Export formats ``offramp export --format`` accepts.
EXPORT_FORMATS = ("onnx",)
#: Backbone families (transformers ``model_type``) whose blocks export and round-trip (tests/test_export.py).
EXPORTABLE_FAMILIES = (
    "bert",
    "roberta",
    "electra",
    "xlm-roberta",
    "camembert",
    "albert",
    "distilbert",
    "mpnet",
    "deberta-v2",
)
_DYNAMIC = {0: "batch", 1: "sequence"}


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the folder, its graphs, size on disk and the time it took."""

    folder: Path
    files: list[str]
    int8: bool
    opset: int
    size_bytes: int
    seconds: float


def check_format(fmt: str) -> str:
    """``fmt`` if it is a known export format; else a ValueError naming it and the choices."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    return fmt


def check_exportable(model: Any) -> str:
    """The model's family if :func:`export_onnx` can export it; else a ValueError saying why not."""
    if not isinstance(model, MultiExitModel):
        raise ValueError(
            f"cannot export a {type(model).__name__}: expected a multi-exit model folder written by "
            "`offramp train` (cascades are not exportable)"
        )
    if getattr(model, "quantization", None) is not None:
        raise ValueError("export the fp32 model: --int8 quantizes the ONNX graphs themselves")
    family = str(getattr(model.backbone.config, "model_type", None))
    if family not in EXPORTABLE_FAMILIES:
        raise ValueError(
            f"cannot export backbone family {family!r} to ONNX; exportable families: "
            + ", ".join(EXPORTABLE_FAMILIES)
        )
    return family


# ---------------------------------------------------------------------------------------------------------
# The blocks as modules: what each graph computes
# ---------------------------------------------------------------------------------------------------------


class _Embed(nn.Module):
    """The embeddings, then the attention context of the whole batch (``keys`` order): one session run."""

    def __init__(self, model: MultiExitModel, keys: list[str]):
        super().__init__()
        self.backbone, self.adapter, self.keys = model.backbone, model.adapter, keys

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        hidden = self.adapter.embed(input_ids, attention_mask, token_type_ids)
        context = self.adapter.layer_context(hidden, attention_mask)
        return (hidden, *(context[k] for k in self.keys))


class _Context(nn.Module):
    """The adapter's ``layer_context`` as a graph: its tensors, in ``keys`` order."""

    def __init__(self, model: MultiExitModel, keys: list[str]):
        super().__init__()
        self.backbone, self.adapter, self.keys = model.backbone, model.adapter, keys

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        context = self.adapter.layer_context(hidden, attention_mask)
        return tuple(context[k] for k in self.keys)


class _Layer(nn.Module):
    """One layer given the context tensors (``fixed``: the context's non-tensor entries, e.g. None)."""

    def __init__(self, model: MultiExitModel, index: int, keys: list[str], fixed: dict[str, Any]):
        super().__init__()
        self.backbone, self.adapter, self.index = model.backbone, model.adapter, index
        self.keys, self.fixed = keys, fixed

    def forward(self, hidden: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        full = {**self.fixed, **dict(zip(self.keys, context, strict=True))}
        return self.adapter.run_layer(self.index, hidden, full)


class _Head(nn.Module):
    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        logits, confidence = self.head(hidden, attention_mask)
        return logits if confidence is None else (logits, confidence)


class _Whole(nn.Module):
    """The stock backbone forward (every layer), then the final head when ``head`` is given."""

    def __init__(self, model: MultiExitModel, head: bool):
        super().__init__()
        self.backbone = model.backbone
        self.head = model.heads[-1] if head else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if _uses_token_types(self.backbone):
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        return hidden if self.head is None else self.head(hidden, attention_mask)[0]


def _uses_token_types(backbone: nn.Module) -> bool:
    config = backbone.config
    return config.model_type not in ("distilbert", "mpnet") and getattr(config, "type_vocab_size", 0) > 0


def _example(model: MultiExitModel) -> dict[str, torch.Tensor]:
    """A traced batch of 2 x 8 tokens whose second row is padded (the masked branches get traced)."""
    config = model.backbone.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, int(config.vocab_size), (2, 8), generator=generator)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    hidden = torch.randn(2, 8, model.adapter.hidden_size, generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "hidden": hidden,
    }


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients while tracing (a parameter that requires grad cannot become a constant)."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _trace(
    module: nn.Module,
    args: tuple,
    names: list[str],
    outputs: list[str],
    path: Path,
    opset: int,
    ranks: dict[str, int] | None = None,
) -> None:
    """Trace ``module`` on ``args`` into ``path``: batch and sequence axes dynamic, and every axis of the
    context tensors (``ctx_*``, whose layouts differ by family)."""
    axes: dict[str, dict[int, str]] = {}
    for name in [*names, *outputs]:
        if name.startswith(CONTEXT_PREFIX):
            axes[name] = {d: f"{name}_{d}" for d in range((ranks or {})[name])}
        else:
            axes[name] = {0: "batch"} if name in ("logits", "confidence") else dict(_DYNAMIC)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            module.eval(), args, str(path), input_names=names, output_names=outputs, dynamic_axes=axes,
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )  # fmt: skip


def _head_outputs(model: MultiExitModel) -> list[str]:
    return ["logits", "confidence"] if model.config.learned_exit else ["logits"]


def _write_layers(model: MultiExitModel, folder: Path, opset: int, ex: dict[str, torch.Tensor]) -> list[str]:
    """``embed.onnx`` (embeddings + the batch's attention context, one session run), ``context.onnx`` (the
    context alone, run again only after rows leave) and one graph per layer taking the context."""
    context = model.adapter.layer_context(ex["hidden"], ex["attention_mask"])
    keys = [k for k, v in context.items() if isinstance(v, torch.Tensor)]
    fixed = {k: v for k, v in context.items() if k not in keys}
    ctx_names = [CONTEXT_PREFIX + k for k in keys]
    ranks = {CONTEXT_PREFIX + k: context[k].dim() for k in keys}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    embed_args = (ex["input_ids"], ex["attention_mask"], ex["token_type_ids"])
    embed_out = ["hidden_out", *ctx_names]
    _trace(_Embed(model, keys), embed_args, names, embed_out, folder / EMBED_FILE, opset, ranks)
    args = (ex["hidden"], ex["attention_mask"])
    _trace(
        _Context(model, keys),
        args,
        ["hidden", "attention_mask"],
        ctx_names,
        folder / CONTEXT_FILE,
        opset,
        ranks,
    )
    files = [EMBED_FILE, CONTEXT_FILE]
    for i in range(model.depth):
        files.append(layer_file(i))
        args = (ex["hidden"], *(context[k] for k in keys))
        module = _Layer(model, i, keys, fixed)
        _trace(module, args, ["hidden", *ctx_names], ["hidden_out"], folder / files[-1], opset, ranks)
    return files


def _write_blocks(model: MultiExitModel, folder: Path, opset: int, stock: bool) -> list[str]:
    """Trace the embeddings, the layers up to the last exit, the heads (and the stock backbone)."""
    ex = _example(model)
    types = _uses_token_types(model.backbone)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    embed_args = (ex["input_ids"], ex["attention_mask"], ex["token_type_ids"])
    files = _write_layers(model, folder, opset, ex)
    for k, head in enumerate(model.heads):
        files.append(head_file(k))
        head_args = (ex["hidden"], ex["attention_mask"])
        _trace(
            _Head(head),
            head_args,
            ["hidden", "attention_mask"],
            _head_outputs(model),
            folder / files[-1],
            opset,
        )
    if stock:
        files.append(STOCK_FILE)
        count = 3 if types else 2
        _trace(
            _Whole(model, False),
            embed_args[:count],
            names[:count],
            ["hidden_out"],
            folder / STOCK_FILE,
            opset,
        )
    return files


def quantize_graph(path: Path) -> None:
    """Dynamic int8 quantization of one graph, in place (``onnxruntime.quantization.quantize_dynamic``).

    Quantized: ``MatMul`` nodes with a constant weight only, i.e. the linear maps of attention and the
    feed-forward block (nearly all of a layer's FLOPs); weights int8 (``QInt8``, symmetric, per tensor),
    activations uint8 with the scale computed per call from the whole tensor (so, as with torch dynamic
    int8, results depend on which rows share a batch). Left fp32: embeddings (``Gather``: quantizing them
    saves disk, not time, and costs accuracy), LayerNorm, softmax, the attention-score MatMuls (both
    operands are activations) and the tiny exit heads (``Gemm``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: Path) -> None:
        quantize_dynamic(
            str(path), str(tmp), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
            per_channel=False, reduce_range=False, extra_options={"MatMulConstBOnly": True},
        )  # fmt: skip

    with _quiet_ort_logs():
        replace_file_atomic(path, write)


@contextlib.contextmanager
def _quiet_ort_logs() -> Iterator[None]:
    import logging

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # quantize_dynamic logs advice about pre-processing at WARNING
    try:
        yield
    finally:
        logger.setLevel(level)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def export_onnx(
    model: MultiExitModel,
    out_dir: str | Path,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    stock: bool = True,
) -> ExportResult:
    """Write ``model`` as one ONNX graph per block into ``out_dir`` (atomically; an existing one is replaced).

    ``int8``: dynamically quantize every graph (see :func:`quantize_graph`); ``stock``: also write the
    whole backbone as one graph (``stock.onnx``, the full-model baseline of ``offramp bench``). The folder
    loads with :meth:`offramp.exported.ExportedModel.load`.
    """
    family = check_exportable(model)
    start = time.perf_counter()
    with atomic_dir(out_dir) as tmp, _frozen(model):
        files = _write_blocks(model, tmp, opset, stock)
        if int8:
            for name in files:
                quantize_graph(tmp / name)
        import onnx

        embed_inputs = [
            i.name for i in onnx.load(str(tmp / EMBED_FILE), load_external_data=False).graph.input
        ]
        (tmp / CONFIG_FILE).write_text(_json(model.config.to_dict()))
        (tmp / BACKBONE_CONFIG_FILE).write_text(model.backbone.config.to_json_string())
        before = set(p.name for p in tmp.iterdir())
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp))
        manifest = ExportManifest(
            family=family, exits=list(model.exits), depth=model.depth,
            backbone_layers=model.adapter.num_layers, int8=int8, opset=opset, embed_inputs=embed_inputs,
            files={name: sha256_of(tmp / name) for name in files}, learned_exit=model.config.learned_exit,
            stock=STOCK_FILE if stock else None,
            tokenizer_files=sorted(p.name for p in tmp.iterdir() if p.name not in before),
            versions=_versions(),
        )  # fmt: skip
        (tmp / MANIFEST_FILE).write_text(_json(manifest.to_dict()))
    folder = Path(out_dir)
    return ExportResult(folder, files, int8, opset, tree_size(folder), time.perf_counter() - start)


def export_full_onnx(
    model: MultiExitModel, path: str | Path, int8: bool = False, opset: int = DEFAULT_OPSET
) -> Path:
    """The whole model as ONE graph: stock backbone forward (every layer) + the final head -> logits.

    Inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for families that use them), dynamic
    batch and sequence axes. The full-model ONNX Runtime baseline (fp32, or int8 with ``int8``) that early
    exit is measured against. Written atomically.
    """
    check_exportable(model)
    path = Path(path)
    ex = _example(model)
    names = ["input_ids", "attention_mask", "token_type_ids"][: 3 if _uses_token_types(model.backbone) else 2]
    args = tuple(ex[n] for n in names)
    with tempfile.TemporaryDirectory() as tmp, _frozen(model):
        graph = Path(tmp) / "full.onnx"
        _trace(_Whole(model, head=True), args, names, ["logits"], graph, opset)
        if int8:
            quantize_graph(graph)
        replace_file_atomic(path, lambda target: shutil.copyfile(graph, target))
    return path


def _json(payload: Any) -> str:
    import json

    return json.dumps(payload, indent=2) + "\n"
