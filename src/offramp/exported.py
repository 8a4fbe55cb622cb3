"""A multi-exit model exported to ONNX (``offramp export``), run by ONNX Runtime under the live runtime.

An export folder holds one ONNX graph per block (``embed.onnx``, ``context.onnx``, ``layer_01.onnx`` …,
``head_1.onnx`` …),
optionally ``stock.onnx`` (the whole backbone as one graph, the baseline ``offramp bench`` times), the
model's ``offramp.json`` (exits, labels, task, saved policy: ``offramp calibrate`` writes into it as into
any model folder), ``backbone_config.json``, the tokenizer, and the manifest ``onnx_export.json``
(:class:`ExportManifest`: format, family, files and their SHA-256). :class:`ExportedModel` loads it without
torch weights or the original model and looks to :class:`~offramp.engine.EarlyExitEngine` and
:func:`~offramp.evaluate.collect_exit_outputs` like a :class:`~offramp.model.MultiExitModel`: its
``adapter`` runs ``embed`` / ``layer_context`` / ``run_layer`` through the ONNX sessions (the context graph
rebuilds the attention context from the 2-D mask of the rows still running, so the runtime's compaction and
padding trimming work unchanged), and ``heads[k]`` returns ``(logits, confidence)``. Tensors cross to numpy
and back without copies (``Tensor.numpy()``, ``torch.from_numpy``). ``embed.onnx`` also returns the
batch's context (``layer_context`` hands it back for that batch; folders exported before this fusion, whose
``embed.onnx`` returns only the hidden states, still load and run).

A ``threshold`` or ``budget`` policy (without temperatures or ensembling) runs as ONE session per batch:
:meth:`ExportedModel.fused_runner` chains the block graphs, as ONNX Runtime optimizes them, with the exit
decisions, row compaction and padding trimming in between (:mod:`offramp.fused`), and the runtime only
stores the results. Other policies, and ``ExportedModel.load(..., fused=False)``, take the per-block path.

Session defaults: see :class:`SessionSettings` (chosen from measurements, quoted there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from .metrics import ExitCosts
from .model import (
    BACKBONE_CONFIG_FILE,
    CONFIG_FILE,
    ExitConfig,
    ExitProperties,
    ModelLoadError,
    MultiExitOutput,
    check_format_version,
)

MANIFEST_FILE = "onnx_export.json"
EXPORT_FORMAT_VERSION = 1
EMBED_FILE = "embed.onnx"
#: The graph computing the layers' attention context from ``(hidden, attention_mask)``, once per batch.
CONTEXT_FILE = "context.onnx"
#: Input/output names of the context tensors (``ctx_mask``, ``ctx_position_bias``, ...).
CONTEXT_PREFIX = "ctx_"
STOCK_FILE = "stock.onnx"
#: ``GraphOptimizationLevel`` names accepted by :class:`SessionSettings`.
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def layer_file(index: int) -> str:
    """File of the graph for layer ``index`` (0-based): ``layer_01.onnx`` is the first layer."""
    return f"layer_{index + 1:02d}.onnx"


def head_file(slot: int) -> str:
    """File of the graph for exit head ``slot`` (0-based): ``head_1.onnx`` is the first exit's head."""
    return f"head_{slot + 1}.onnx"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ExportManifest:
    """``onnx_export.json``: what the folder holds and how it was made.

    ``backbone_layers``: the layers of the whole backbone (``stock.onnx`` runs them all, the block graphs
    only the first ``depth``); ``files``: every ONNX graph (relative name -> SHA-256, checked on load);
    ``embed_inputs``: the inputs of ``embed.onnx`` (``token_type_ids`` only for families that use them);
    ``stock``: the file of the whole backbone as one graph, or None; ``int8``: graphs dynamically
    quantized (see ``offramp.export``).
    """

    family: str
    exits: list[int]
    depth: int
    backbone_layers: int
    int8: bool
    opset: int
    embed_inputs: list[str]
    files: dict[str, str]
    learned_exit: bool = False
    stock: str | None = None
    tokenizer_files: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = EXPORT_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> ExportManifest:
        """Read and validate ``folder``'s manifest; a clear :class:`ModelLoadError` for anything wrong."""
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise ModelLoadError(
                f"{str(folder)!r} has no {MANIFEST_FILE}; expected a folder written by `offramp export`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
            manifest = cls(**data)
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"corrupt {MANIFEST_FILE} in {str(folder)!r}: {exc}") from exc
        check_format_version(f"export {str(folder)!r}", manifest.format_version, EXPORT_FORMAT_VERSION)
        return manifest


def is_export_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds an ONNX export manifest."""
    return (Path(folder) / MANIFEST_FILE).is_file()


@dataclass(frozen=True)
class SessionSettings:
    """ONNX Runtime session options for every block of an exported model.

    ``threads``: intra-op threads per session (None: ``torch.get_num_threads()``, what the rest of offramp
    uses: ``--threads`` / ``OMP_NUM_THREADS`` set both); ``spinning``: whether idle pool threads busy-wait
    for the next op (``session.intra_op.allow_spinning``); ``optimization``: graph optimisation level, one
    of :data:`OPTIMIZATION_LEVELS`; ``shared_arena``: allocate from ONNX Runtime's process-wide CPU arena.
    Execution is sequential (a layer graph is a chain).

    Why these defaults (MiniLM-L6 SST-2 int8 export, SST-2 dev, 2-core machine shared with other jobs,
    interleaved medians): ``optimization="all"``: CPU ms/input of the full per-block model at one thread,
    batch 64: 3.04 (all) vs 3.11 (extended) vs 3.99 (basic); batch 1: 2.87 vs 3.04 vs 3.11.
    ``spinning=False``: every block is its own session with its own thread pool, so a pool spinning after
    its block competes with the next block's threads; with 2 threads on the busy machine spinning made
    the full model 93.6 vs 8.6 ms/input at batch 1 and 19.4 vs 8.1 at batch 64 (wall clock); without
    spinning a second thread helped a little (batch 64: 8.1 vs 9.0 ms/input). On a quiet machine spinning
    may gain a little, so it is a parameter; it is never the safe default here. A global thread
    pool shared by all sessions (``use_per_session_threads=False``) would need
    ``onnxruntime.set_global_thread_pool_sizes`` before the process's first session (process-wide state,
    not something one model can choose); at 2 threads on this shared 2-core machine it was inconclusive
    (3 of 6 layers, wall ms/input: 1.13 vs 1.70 per-session pools in one run, 2.50 vs 1.79 in the next).
    ``shared_arena=True``: every session allocates from one process-wide CPU arena (registered once,
    ``session.use_env_allocators``) instead of one arena each, so consecutive blocks reuse the same warm
    buffers: interleaved medians, CPU ms/input at 1 thread, early exit (3.1 of 6 layers) / full depth:
    batch 64 1.213 / 2.216 vs 1.336 / 2.403 with per-session arenas; batch 1 1.581 / 2.325 vs 1.627 / 2.346.
    """

    threads: int | None = None
    spinning: bool = False
    optimization: str = "all"
    shared_arena: bool = True

    def options(self) -> Any:
        """The ``onnxruntime.SessionOptions`` these settings describe."""
        import onnxruntime as ort

        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(
                f"optimization {self.optimization!r}: expected one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        if threads < 1:
            raise ValueError(f"threads {threads!r}: expected a positive count")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        opts.graph_optimization_level = level
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.shared_arena and _shared_arena():
            opts.add_session_config_entry("session.use_env_allocators", "1")
        opts.log_severity_level = 3
        return opts


_SHARED_ARENA: list[bool] = []


def _shared_arena() -> bool:
    """Register ONNX Runtime's process-wide CPU arena once (sessions opt in with ``use_env_allocators``);
    False when it cannot be registered (then every session keeps its own arena, as by default)."""
    if not _SHARED_ARENA:
        import onnxruntime as ort

        try:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _SHARED_ARENA.append(True)
        except Exception:  # already registered by other code, or an onnxruntime without the API
            _SHARED_ARENA.append(False)
    return _SHARED_ARENA[0]


def ort_session(path: str | os.PathLike[str] | bytes, settings: SessionSettings | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for one graph (a file, or a serialized model), with
    ``settings`` (default: the :class:`SessionSettings` defaults, what the exported blocks run with)."""
    import onnxruntime as ort

    options = (settings or SessionSettings()).options()
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def optimized_graph(path: Path, settings: SessionSettings) -> Any:
    """The ONNX model of ``path`` as ONNX Runtime optimizes it under ``settings`` (fused kernels, folded
    shape arithmetic), read back with ``onnx``."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = settings.options()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _numpy(tensor: torch.Tensor, dtype: Any) -> np.ndarray:
    """A C-contiguous numpy view of ``tensor`` (a copy only when it is strided or of another dtype)."""
    array = tensor.detach().numpy()
    return np.ascontiguousarray(array, dtype=dtype)


class _Graph:
    """One ONNX Runtime session; feeds only the inputs the graph declares."""

    def __init__(self, path: Path | bytes, settings: SessionSettings, name: str | None = None):
        try:
            self.session = ort_session(path, settings)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"cannot load ONNX graph {name or str(path)!r}: {exc}") from exc
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def arrays(self, **feeds: np.ndarray | None) -> list[np.ndarray]:
        """Run on the inputs the graph declares (other feeds are ignored); numpy outputs."""
        return self.session.run(None, {name: feeds[name] for name in self.inputs})

    def __call__(self, **feeds: np.ndarray | None) -> list[torch.Tensor]:
        return [torch.from_numpy(out) for out in self.arrays(**feeds)]

    def token_feeds(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> dict[str, np.ndarray]:
        """int64 token inputs for a graph that starts from token ids (zero type ids when it wants them)."""
        feeds = {"input_ids": _numpy(input_ids, np.int64), "attention_mask": _numpy(attention_mask, np.int64)}
        if "token_type_ids" in self.inputs:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            feeds["token_type_ids"] = _numpy(types, np.int64)
        return feeds


@dataclass(frozen=True)
class FusedRunner:
    """Runs batches through a fused early-exit graph (:mod:`offramp.fused`): ``single`` for one row, else
    ``batch``, with fixed per-exit ``thresholds``; returns each row's exit logits (tensor) and exit slot."""

    batch: _Graph
    single: _Graph
    thresholds: np.ndarray

    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, np.ndarray]:
        ids = inputs["input_ids"]
        graph = self.single if ids.shape[0] == 1 else self.batch
        feeds = graph.token_feeds(ids, inputs["attention_mask"], inputs.get("token_type_ids"))
        feeds["thresholds"] = self.thresholds
        logits, slots = graph.arrays(**feeds)
        return torch.from_numpy(logits), slots


class ExportedAdapter:
    """The backbone adapter interface of ``offramp.backbones`` over the exported block graphs.

    ``embed.onnx`` also returns the batch's attention context (one session run instead of two);
    ``layer_context`` hands it back when asked for that very hidden/mask pair (what the runtime does
    next), and runs ``context.onnx`` otherwise (after rows leave). Folders whose ``embed.onnx`` returns
    only the hidden states (exported before the fusion) load and run as before.
    """

    #: The layer graphs mix positions only through the masked attention they rebuild from the 2-D mask,
    #: exactly like the eager layers they were traced from.
    trim_safe = True

    def __init__(self, embed: _Graph, context: _Graph, layers: list[_Graph], num_layers: int):
        self._embed, self._context, self._layers, self.num_layers = embed, context, layers, num_layers
        self._pending: tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | None = None

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        arrays = self._embed.arrays(**self._embed.token_feeds(input_ids, attention_mask, token_type_ids))
        hidden = torch.from_numpy(arrays[0])
        if len(arrays) > 1:  # the batch's context came with it
            context = dict(zip(self._embed.outputs[1:], arrays[1:], strict=True))
            self._pending = (hidden, attention_mask, context)
        return hidden

    def layer_context(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        """The family's context tensors (4-D mask, position bias, ...) as numpy arrays, fed straight to
        every layer graph until the runtime drops rows and asks again: the ones ``embed`` returned when
        asked for its own output and mask (identity, not equality), else from ``context.onnx``."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is hidden and pending[1] is attention_mask:
            return pending[2]
        arrays = self._context.arrays(
            hidden=_numpy(hidden, np.float32), attention_mask=_numpy(attention_mask, np.int64)
        )
        return dict(zip(self._context.outputs, arrays, strict=True))

    def run_layer(self, index: int, hidden: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
        return self._layers[index](hidden=_numpy(hidden, np.float32), **context)[0]


class ExportedHead:
    """An exit head graph: ``(hidden, attention_mask) -> (logits, confidence or None)``."""

    def __init__(self, graph: _Graph):
        self.graph = graph

    def __call__(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs = self.graph(hidden=_numpy(hidden, np.float32), attention_mask=_numpy(attention_mask, np.int64))
        return outs[0], (outs[1] if len(outs) > 1 else None)


class _StockBackbone:
    """``stock.onnx`` called like a Hugging Face ``AutoModel``: ``.last_hidden_state`` of every layer."""

    def __init__(self, graph: _Graph, config: Any):
        self.graph, self.config = graph, config

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> SimpleNamespace:
        feeds = self.graph.token_feeds(input_ids, attention_mask, token_type_ids)
        return SimpleNamespace(last_hidden_state=self.graph(**feeds)[0])


class ExportedModel(ExitProperties):
    """An ``offramp export`` folder run by ONNX Runtime, usable wherever a MultiExitModel is run (CPU).

    ``EarlyExitEngine(ExportedModel.load(folder))`` runs early exit over the block graphs;
    ``model(input_ids, attention_mask)`` returns every exit's outputs (:class:`MultiExitOutput`), as
    :func:`~offramp.evaluate.collect_exit_outputs` and calibration need; ``backbone`` (when the folder has
    ``stock.onnx``) is the whole backbone as one graph, which ``offramp bench`` times as its stock baseline.
    """

    def __init__(
        self,
        folder: Path,
        manifest: ExportManifest,
        config: ExitConfig,
        settings: SessionSettings,
        tokenizer: Any = None,
        fused: bool = True,
    ):
        self.folder, self.manifest, self.config, self.settings = folder, manifest, config, settings
        self.tokenizer = tokenizer
        self.quantization = None  # torch quantization does not apply; see __deepcopy__
        layers = [_Graph(folder / layer_file(i), settings) for i in range(manifest.depth)]
        embed, context = _Graph(folder / EMBED_FILE, settings), _Graph(folder / CONTEXT_FILE, settings)
        self.adapter = ExportedAdapter(embed, context, layers, manifest.backbone_layers)
        self.heads = [
            ExportedHead(_Graph(folder / head_file(k), settings)) for k in range(len(manifest.exits))
        ]
        self._stock = _Graph(folder / manifest.stock, settings) if manifest.stock else None
        self._exit_slot = {layer: k for k, layer in enumerate(manifest.exits)}
        self.fused = fused
        self._fused_graphs: dict[str, _Graph] = {}

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        threads: int | None = None,
        spinning: bool | None = None,
        optimization: str | None = None,
        verify: bool = True,
        shared_arena: bool | None = None,
        fused: bool = True,
    ) -> ExportedModel:
        """Load an export folder; ``threads``/``spinning``/``optimization``/``shared_arena`` override
        :class:`SessionSettings`.

        ``verify`` checks every graph's SHA-256 against the manifest (a corrupt or swapped file is an error).
        ``fused``: run ``threshold`` policies as one graph per batch (:meth:`fused_runner`); False keeps every
        policy on the per-block path (one session run per block).
        """
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ModelLoadError(
                "running an exported model needs onnxruntime: pip install 'offramp[onnx]'"
            ) from exc
        path = Path(folder)
        manifest = ExportManifest.read(path)
        _check_files(path, manifest, verify)
        try:
            config = ExitConfig.from_dict(json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"cannot read {CONFIG_FILE} in {str(path)!r}: {exc}") from exc
        if list(config.exits) != list(manifest.exits):
            raise ModelLoadError(
                f"{CONFIG_FILE} in {str(path)!r} lists exits {config.exits}, but the graphs were exported "
                f"for {manifest.exits}"
            )
        defaults = SessionSettings()
        settings = SessionSettings(
            threads=threads if threads is not None else defaults.threads,
            spinning=spinning if spinning is not None else defaults.spinning,
            optimization=optimization or defaults.optimization,
            shared_arena=shared_arena if shared_arena is not None else defaults.shared_arena,
        )
        settings.options()  # validate before loading graphs
        tokenizer = (
            AutoTokenizer.from_pretrained(str(path)) if (path / "tokenizer_config.json").is_file() else None
        )
        return cls(path, manifest, config, settings, tokenizer, fused)

    # -- early exit as one graph -----------------------------------------------------------------
    def fused_graph(self, signal: str, single_row: bool = False) -> _Graph:
        """The whole early-exit forward with ``signal`` as one session (:mod:`offramp.fused`; ``single_row``:
        the graph for batches of one row), built from this folder's block graphs on first use and kept."""
        key = f"{signal}/1" if single_row else signal
        graph = self._fused_graphs.get(key)
        if graph is None:
            from .fused import Blocks, fuse

            def load(name: str) -> Any:  # as its own session optimizes it: the same fused kernels
                return optimized_graph(self.folder / name, self.settings)

            m = self.manifest
            blocks = Blocks(
                load(EMBED_FILE), load(CONTEXT_FILE), [load(layer_file(i)) for i in range(m.depth)],
                [load(head_file(k)) for k in range(len(m.exits))], list(m.exits), self.config.num_labels,
                m.learned_exit,
            )  # fmt: skip
            name = f"fused {key} graph of {str(self.folder)!r}"
            graph = self._fused_graphs[key] = _Graph(
                fuse(blocks, signal, single_row).SerializeToString(), self.settings, name
            )
        return graph

    def fused_runner(self, policy: Any, thresholds: Any) -> FusedRunner | None:
        """Early exit for ``policy`` (its threshold-axis values ``thresholds`` [K]) as ONE session run per
        batch, planned once per call of the runtime; None when a fused graph cannot express the policy
        (see :func:`offramp.fused.fused_plan`), fusion is off, or ``onnx`` is not installed — the runtime
        then takes the per-block path. Builds the graphs (batch and one-row) on first use."""
        from .fused import fused_plan

        values = thresholds.numpy() if isinstance(thresholds, torch.Tensor) else thresholds
        plan = fused_plan(policy, values) if self.fused and self.config.num_labels > 1 else None
        if plan is None or (plan.signal == "learned" and not self.manifest.learned_exit):
            return None
        try:
            graphs = (self.fused_graph(plan.signal), self.fused_graph(plan.signal, single_row=True))
        except ImportError:  # onnx (needed to compose graphs) is not installed: per-block path
            self.fused = False
            return None
        return FusedRunner(*graphs, plan.thresholds)

    def prepare_fused(self, policy: Any) -> bool:
        """Build now the fused graphs ``policy`` would run (a server's first request should not wait for
        them); False when the policy takes the per-block path."""
        return self.fused_runner(policy, np.ones(len(self.manifest.exits))) is not None

    # -- what the runtime, evaluation and bench read --------------------------------------------
    @property
    def exit_costs(self) -> ExitCosts:
        return ExitCosts.of_exits(self.config.exits)

    @property
    def int8(self) -> bool:
        return self.manifest.int8

    @property
    def backbone(self) -> _StockBackbone:
        """The whole backbone as one ONNX graph (``stock.onnx``), called like a Hugging Face AutoModel."""
        if self._stock is None:
            raise ValueError(
                f"exported model {str(self.folder)!r} has no {STOCK_FILE} (exported with --no-stock); "
                "re-export without --no-stock to benchmark against the whole backbone"
            )
        return _StockBackbone(self._stock, self.backbone_config)

    @property
    def backbone_config(self) -> Any:
        """The exported backbone's transformers config (``backbone_config.json``)."""
        from transformers import AutoConfig

        data = json.loads((self.folder / BACKBONE_CONFIG_FILE).read_text(encoding="utf-8"))
        return AutoConfig.for_model(data.pop("model_type"), **data)

    def parameters(self) -> Iterator[torch.Tensor]:
        """One empty CPU tensor: callers read the device off the first parameter."""
        yield torch.empty(0)

    def eval(self) -> ExportedModel:
        return self

    def to(self, device: str | torch.device) -> ExportedModel:
        if torch.device(device).type != "cpu":
            raise ValueError(f"an exported ONNX model runs on the CPU only; got device {str(device)!r}")
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ExportedModel:
        raise ValueError(
            "an exported ONNX model cannot be quantized or copied by torch (--quantize); export it with "
            "`offramp export MODEL --format onnx --int8` instead"
        )

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> MultiExitOutput:
        """Every exit's outputs in one pass: logits [E, B, C], confidence [E, B] or None."""
        adapter = self.adapter
        hidden = adapter.embed(input_ids, attention_mask, token_type_ids)
        context = adapter.layer_context(hidden, attention_mask)
        logits, confidence = [], []
        for i in range(self.depth):
            hidden = adapter.run_layer(i, hidden, context)
            slot = self._exit_slot.get(i + 1)
            if slot is not None:
                exit_logits, exit_conf = self.heads[slot](hidden, attention_mask)
                logits.append(exit_logits)
                confidence.append(exit_conf)
        conf = torch.stack(confidence) if self.config.learned_exit else None
        return MultiExitOutput(logits=torch.stack(logits), confidence=conf)


def _check_files(folder: Path, manifest: ExportManifest, verify: bool) -> None:
    """Every graph the manifest lists is there (and, with ``verify``, has the recorded SHA-256)."""
    expected = [
        EMBED_FILE,
        CONTEXT_FILE,
        *map(layer_file, range(manifest.depth)),
        *map(head_file, range(len(manifest.exits))),
    ]
    if manifest.stock:
        expected.append(manifest.stock)
    unlisted = [name for name in expected if name not in manifest.files]
    if unlisted:
        raise ModelLoadError(f"corrupt {MANIFEST_FILE} in {str(folder)!r}: it does not list {unlisted}")
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"export folder {str(folder)!r} lacks {missing}; re-run `offramp export`")
    if verify:
        bad = [name for name in expected if sha256_of(folder / name) != manifest.files[name]]
        if bad:
            raise ModelLoadError(
                f"ONNX graphs {bad} in {str(folder)!r} do not match the checksums in {MANIFEST_FILE} "
                "(corrupt or replaced); re-run `offramp export`"
            )
