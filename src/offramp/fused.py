"""Early exit compiled into one ONNX graph: an export's block graphs chained with the exit decisions.

Why (issue 13): the per-block runtime calls ONNX Runtime once per block (embeddings, every layer, every
exit head) from Python, and at batch 1 those fixed per-call costs (~40-65 us a run) plus the Python loop
around them cost early exit a third of its speed-up against the whole model as one int8 graph. Here the
whole early-exit forward is one session run: the block graphs of an export folder, as ONNX Runtime
optimizes them (:func:`offramp.exported.optimized_graph`: fused int8 MatMuls, SkipLayerNorm, folded shape
arithmetic), are inlined, and between exits ONNX ops do what the Python runtime does
(:class:`~offramp.engine.EarlyExitEngine`) for a ``threshold`` policy:

1. the exit's signal (the formulas of :mod:`offramp.signals`, in float32) is compared with that exit's
   threshold in float64, as :meth:`Signal.passes` does (value >= tau for max-prob and learned, value < tau
   for the entropy and energy signals); the last exit takes every row left;
2. the rows that leave are written into the batch's ``logits`` [B, C] and ``exit_slot`` [B] outputs
   (``ScatterND`` by original row);
3. if none is left, an ``If`` returns; else the rows still running are kept (``Compress``), trailing
   all-padding columns trimmed (as ``engine._trim_padding``), and the attention context rebuilt by the
   inlined ``context.onnx`` — only when some row left, as the runtime does — before the next layers.

A one-row variant (``single_row``) for batch 1 only returns or goes on at each exit. Thresholds are a graph
input (``thresholds`` [K], float64), so the speed can change on every call without a rebuild; the signal
is fixed per graph (:meth:`offramp.exported.ExportedModel.fused_graph` builds one per signal on demand).
Probabilities and predictions are computed by the caller from the returned logits, with the same torch
code as the per-block runtime. Decisions are exact up to float rounding (ONNX Runtime's softmax against
torch's); measured on the SST-2 speed model (fp32 and int8, batch 1 and 64), every exit, prediction and
probability equals the per-block runtime's bit for bit. ``budget`` policies run on the max-prob graph with
thresholds that force their exit; patience, BEEM, PCEE, ensembling and temperature scaling run on the
per-block path (see :func:`fused_plan`).

Two things that mattered (measured on MiniLM-L6 int8, SST-2 dev): composing the *unoptimized* block
graphs lost ONNX Runtime's fusions across the inlined boundaries, so the optimized blocks are composed;
and each block's weights stay in the ``If`` branch that uses them, because ONNX Runtime pre-packs only a
graph's own constant weights (fed from the outer scope the quantized MatMuls ran ~1.8x slower). Result
(``benchmarks/results/speed.md``): early exit + int8 at 2x, 1 thread, batch 1: 1.26 ms/input fused vs
1.67 block by block vs 1.97 for the whole model as one int8 graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from .signals import get_signal

#: Signals the fused graph computes (names of :data:`offramp.signals.SIGNALS`).
FUSABLE_SIGNALS = ("maxprob", "entropy", "norm_entropy", "energy", "norm_energy", "learned")


@dataclass(frozen=True)
class FusedPlan:
    """How a policy runs on a fused graph: the graph's ``signal`` and the ``thresholds`` [K] to feed."""

    signal: str
    thresholds: np.ndarray


def fused_plan(policy: Any, thresholds: Any) -> FusedPlan | None:
    """The fused graph and thresholds that run ``policy`` (its threshold-axis values ``thresholds`` [K]),
    or None when a fused graph cannot express it.

    ``threshold`` policies map directly. ``budget`` k (every input leaves at exit k; k = K is the full
    model) runs the max-prob graph with thresholds that never pass before exit k (+inf) and always pass
    from it (-inf): the same exits and labels, with the earlier heads evaluated and ignored. Patience,
    BEEM, PCEE, ensembling and temperature scaling need state or arithmetic the graph does not hold.
    """
    if getattr(policy, "ensemble", False) or getattr(policy, "temperatures", None) is not None:
        return None
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    kind = getattr(policy, "kind", None)
    if kind == "budget":
        k = int(values[0])
        return FusedPlan("maxprob", np.where(np.arange(len(values)) < k - 1, np.inf, -np.inf))
    signal = getattr(policy, "signal", None)
    if kind != "threshold" or signal not in FUSABLE_SIGNALS:
        return None
    return FusedPlan(signal, np.ascontiguousarray(values))


@dataclass
class Blocks:
    """An export's block graphs (ONNX models) and what the fused graph needs to know about them."""

    embed: onnx.ModelProto
    context: onnx.ModelProto
    layers: list[onnx.ModelProto]
    heads: list[onnx.ModelProto]
    exits: list[int]
    num_classes: int
    learned_exit: bool = False


@dataclass
class _Running:
    """Names of the values describing the rows still running at one point of the graph."""

    hidden: str
    mask: str
    rows: str
    context: dict[str, str]


class _Body(list):
    """The nodes of one graph body (the main graph or an ``If`` branch) and the value types declared in it."""

    def __init__(self) -> None:
        super().__init__()
        self.value_info: list[onnx.ValueInfoProto] = []
        #: The weights of the blocks inlined here: kept in the body that uses them, because ONNX Runtime
        #: pre-packs only a graph's own constant weights (quantized MatMuls fed from an outer scope ran
        #: ~1.8x slower, measured on MiniLM-L6 int8).
        self.initializers: list[onnx.TensorProto] = []


def _unsized(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    """``value``'s type under ``name``, with symbolic dimensions made unknown (rows and tokens change as
    inputs leave) and fixed ones (the hidden size) kept, so ONNX Runtime still folds the shape arithmetic
    on them and fuses as it does in the block graphs."""
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    for dim in out.type.tensor_type.shape.dim:
        if not dim.HasField("dim_value"):
            dim.Clear()
    return out


@dataclass
class _Builder:
    """Collects the opsets of every inlined block; makes unique value names; knows the types of the values
    that cross block and branch boundaries."""

    opsets: dict[str, int] = field(default_factory=dict)
    count: int = 0
    types: dict[str, onnx.ValueInfoProto] = field(default_factory=dict)

    def name(self, hint: str) -> str:
        self.count += 1
        return f"fx{self.count}_{hint}"

    def declare(self, body: _Body, name: str, like: onnx.ValueInfoProto | str) -> str:
        """Record ``name``'s type (that of ``like``: a value info, or a name declared before) in ``body``."""
        source = self.types[like] if isinstance(like, str) else like
        body.value_info.append(_unsized(source, name))
        self.types[name] = body.value_info[-1]
        return name

    def tensor(self, name: str, dtype: int, shape: Sequence[int | None]) -> onnx.ValueInfoProto:
        """A value info for a tensor of ``dtype`` and ``shape`` (None: unknown size), recorded as ``name``."""
        info = self.types[name] = helper.make_tensor_value_info(name, dtype, list(shape))
        return info

    def const(self, nodes: _Body, value: Any, dtype: int, hint: str) -> str:
        out = self.name(hint)
        shape = [len(value)] if isinstance(value, (list, tuple)) else []
        vals = list(value) if isinstance(value, (list, tuple)) else [value]
        nodes.append(
            helper.make_node("Constant", [], [out], value=helper.make_tensor(out, dtype, shape, vals))
        )
        return out

    def op(self, nodes: _Body, op_type: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def inline(self, model: onnx.ModelProto, prefix: str, feeds: dict[str, str], nodes: _Body) -> list[str]:
        """Append ``model``'s nodes (names prefixed), fed from ``feeds`` (input -> value); its outputs."""
        block = onnx.compose.add_prefix(model, prefix)
        graph = block.graph
        nodes.initializers.extend(graph.initializer)
        for opset in block.opset_import:
            self.opsets[opset.domain] = max(self.opsets.get(opset.domain, 0), opset.version)
        stored = {init.name for init in graph.initializer}
        rename = {}
        for value in graph.input:
            if value.name in stored:
                continue
            original = value.name[len(prefix) :]
            if original not in feeds:
                raise ValueError(f"block graph {prefix!r} wants input {original!r}; the fused graph has none")
            rename[value.name] = feeds[original]
        for node in graph.node:  # read the feeds directly (an Identity would hide them from the optimizer)
            node.input[:] = [rename.get(name, name) for name in node.input]
        nodes.extend(graph.node)
        for value in graph.value_info:
            self.declare(nodes, value.name, value)
        return [self.declare(nodes, out.name, out) for out in graph.output]


def _signal(b: _Builder, nodes: _Body, signal: str, logits: str, conf: str | None, classes: int) -> str:
    """The float32 signal values [n] of one exit, as :mod:`offramp.signals` computes them."""
    if signal == "maxprob":
        probs = b.op(nodes, "Softmax", [logits], "probs", axis=-1)
        return b.op(nodes, "ReduceMax", [probs], "maxprob", axes=[-1], keepdims=0)
    if signal == "learned":
        if conf is None:
            raise ValueError("the 'learned' signal needs a model trained with learned-exit heads")
        flat = b.op(nodes, "Reshape", [conf, b.const(nodes, [-1], TensorProto.INT64, "flat")], "conf")
        return b.op(nodes, "Sigmoid", [flat], "learned")
    if signal in ("energy", "norm_energy"):
        lse = b.op(nodes, "ReduceLogSumExp", [logits], "lse", axes=[-1], keepdims=0)
        energy = b.op(nodes, "Neg", [lse], "energy")
        return energy if signal == "energy" else b.op(nodes, "Sigmoid", [energy], "norm_energy")
    logp = b.op(nodes, "LogSoftmax", [logits], "logp", axis=-1)
    plogp = b.op(nodes, "Mul", [b.op(nodes, "Exp", [logp], "p"), logp], "plogp")
    entropy = b.op(
        nodes,
        "Neg",
        [b.op(nodes, "ReduceSum", [plogp, b.const(nodes, [-1], TensorProto.INT64, "ax")], "sum", keepdims=0)],
        "entropy",
    )
    if signal == "entropy":
        return entropy
    return b.op(nodes, "Div", [entropy, b.const(nodes, math.log(classes), TensorProto.FLOAT, "logc")], "norm")


def _record(
    b: _Builder, nodes: _Body, state: tuple[str, str], rows: str, logits: str, slot: int
) -> tuple[str, str]:
    """Write ``logits`` [n, C] of original rows ``rows`` [n] and their exit slot into the batch outputs."""
    out, slots = state
    index = b.op(nodes, "Unsqueeze", [rows, b.const(nodes, [1], TensorProto.INT64, "ax1")], "index")
    out = b.declare(nodes, b.op(nodes, "ScatterND", [out, index, logits], "out"), out)
    fill = b.op(
        nodes,
        "Expand",
        [b.const(nodes, slot, TensorProto.INT64, "slot"), b.op(nodes, "Shape", [rows], "n")],
        "fill",
    )
    return out, b.declare(nodes, b.op(nodes, "ScatterND", [slots, index, fill], "slots"), slots)


def _any(b: _Builder, nodes: _Body, flags: str, hint: str) -> str:
    """A scalar bool: whether any of ``flags`` [n] is true."""
    as_int = b.op(nodes, "Cast", [flags], hint + "_int", to=TensorProto.INT32)
    top = b.op(nodes, "ReduceMax", [as_int], hint + "_max", keepdims=0)
    return b.op(nodes, "Cast", [top], hint, to=TensorProto.BOOL)


def _branch(b: _Builder, name: str, nodes: _Body, outputs: Sequence[str]) -> onnx.GraphProto:
    """An ``If`` branch: ``nodes`` producing ``outputs`` (declared values)."""
    values = [v for v in nodes.value_info if v.name not in outputs]
    outs = [b.types[o] for o in outputs]
    return helper.make_graph(list(nodes), name, [], outs, initializer=nodes.initializers, value_info=values)


def _if(
    b: _Builder,
    nodes: _Body,
    cond: str,
    then: onnx.GraphProto,
    other: onnx.GraphProto,
    hints: Sequence[str],
) -> list[str]:
    """An ``If`` node in ``nodes``; its outputs are declared with the then-branch's output types."""
    outs = [b.name(hint) for hint in hints]
    nodes.append(helper.make_node("If", [cond], outs, then_branch=then, else_branch=other))
    for out, value in zip(outs, then.output, strict=True):
        b.declare(nodes, out, value)
    return outs


def _reduce(b: _Builder, nodes: _Body, op: str, x: str, axes: list[int], hint: str, keepdims: int) -> str:
    """``op`` over ``axes``: an attribute before opset 18 (ReduceSum: 13), an input from then on."""
    since = 13 if op == "ReduceSum" else 18
    if b.opsets.get("", 0) >= since:
        return b.op(nodes, op, [x, b.const(nodes, axes, TensorProto.INT64, "axes")], hint, keepdims=keepdims)
    return b.op(nodes, op, [x], hint, axes=axes, keepdims=keepdims)


def _trim(b: _Builder, nodes: _Body, hidden: str, mask: str) -> tuple[str, str]:
    """Drop trailing columns that are padding in every row left (``engine._trim_padding``)."""
    used = _reduce(b, nodes, "ReduceMax", mask, [0], "used", keepdims=0)  # [s] 0/1
    width = b.op(nodes, "Shape", [mask], "width", start=1, end=2)
    stop = b.op(nodes, "Squeeze", [width], "stop")
    one = b.const(nodes, 1, TensorProto.INT64, "one")
    position = b.op(nodes, "Range", [one, b.op(nodes, "Add", [stop, one], "end"), one], "position")  # 1..s
    last = _reduce(b, nodes, "ReduceMax", b.op(nodes, "Mul", [used, position], "last_used"), [0], "last", 1)
    keep = b.op(nodes, "Max", [last, b.const(nodes, [1], TensorProto.INT64, "min_width")], "keep_width")
    zero, axis = (
        b.const(nodes, [0], TensorProto.INT64, "start"),
        b.const(nodes, [1], TensorProto.INT64, "axis"),
    )
    return (
        b.op(nodes, "Slice", [hidden, zero, keep, axis], "hidden_trim"),
        b.op(nodes, "Slice", [mask, zero, keep, axis], "mask_trim"),
    )


def _compact(
    b: _Builder, blocks: Blocks, nodes: _Body, run: _Running, keep: str, any_done: str, k: int
) -> _Running:
    """The rows still running after exit ``k``: compressed, trimmed, context rebuilt — when some row left."""
    inner = _Body()
    hidden, mask, rows = (
        b.op(inner, "Compress", [x, keep], "kept", axis=0) for x in (run.hidden, run.mask, run.rows)
    )
    hidden, mask = _trim(b, inner, hidden, mask)
    b.declare(inner, hidden, run.hidden), b.declare(inner, mask, run.mask), b.declare(inner, rows, run.rows)
    prefix = f"context{k + 1}_"
    context = b.inline(blocks.context, prefix, {"hidden": hidden, "attention_mask": mask}, inner)
    keys = [name[len(prefix) :] for name in context]
    then = _branch(b, f"compact{k + 1}", inner, [hidden, mask, rows, *context])
    same = _Body()
    kept = [
        b.declare(same, b.op(same, "Identity", [x], "same"), x)
        for x in (run.hidden, run.mask, run.rows, *(run.context[key] for key in keys))
    ]
    other = _branch(b, f"unchanged{k + 1}", same, kept)
    outs = _if(b, nodes, any_done, then, other, ["hidden", "mask", "rows", *keys])
    return _Running(outs[0], outs[1], outs[2], dict(zip(keys, outs[3:], strict=True)))


def _decide(
    b: _Builder, nodes: _Body, signal: str, logits: str, conf: str | None, k: int, classes: int
) -> str:
    """bool [n]: the rows whose signal passes exit ``k``'s threshold (compared in float64, as torch does)."""
    value = b.op(
        nodes, "Cast", [_signal(b, nodes, signal, logits, conf, classes)], "value", to=TensorProto.DOUBLE
    )
    tau = b.op(nodes, "Gather", ["thresholds", b.const(nodes, k, TensorProto.INT64, "k")], "tau", axis=0)
    passes = "GreaterOrEqual" if get_signal(signal).confidence_positive else "Less"  # as Signal.passes
    return b.op(nodes, passes, [value, tau], "done")


def _stage(
    b: _Builder, blocks: Blocks, k: int, run: _Running, state: tuple[str, str], signal: str, nodes: _Body
) -> tuple[str, str]:
    """Layers up to exit ``k``, its head and decision, then (in an ``If``) the next stage or the result."""
    hidden = run.hidden
    for i in range(blocks.exits[k - 1] if k else 0, blocks.exits[k]):
        hidden = b.inline(blocks.layers[i], f"layer{i + 1}_", {"hidden": hidden, **run.context}, nodes)[0]
    head = b.inline(blocks.heads[k], f"head{k + 1}_", {"hidden": hidden, "attention_mask": run.mask}, nodes)
    logits, conf = head[0], (head[1] if len(head) > 1 else None)
    if k == len(blocks.exits) - 1:
        return _record(b, nodes, state, run.rows, logits, k)
    done = _decide(b, nodes, signal, logits, conf, k, blocks.num_classes)
    gone = [b.op(nodes, "Compress", [x, done], "gone", axis=0) for x in (run.rows, logits)]
    state = _record(b, nodes, state, gone[0], gone[1], k)
    keep = b.op(nodes, "Not", [done], "keep")
    inner = _Body()
    at_exit = _Running(hidden, run.mask, run.rows, run.context)
    following = _compact(b, blocks, inner, at_exit, keep, _any(b, nodes, done, "any_done"), k)
    then = _branch(
        b, f"continue{k + 1}", inner, list(_stage(b, blocks, k + 1, following, state, signal, inner))
    )
    ret = _Body()
    other = _branch(
        b, f"return{k + 1}", ret, [b.declare(ret, b.op(ret, "Identity", [x], "result"), x) for x in state]
    )
    logits, slots = _if(b, nodes, _any(b, nodes, keep, "any_left"), then, other, ["logits", "exit_slot"])
    return logits, slots


def _stage_single(
    b: _Builder, blocks: Blocks, k: int, run: _Running, signal: str, nodes: _Body
) -> tuple[str, str]:
    """The one-row graph: layers up to exit ``k``, its head, and an ``If`` that returns its logits when the
    row leaves, else runs the next stage (no compaction, no scatter: a few ops per exit)."""
    hidden = run.hidden
    for i in range(blocks.exits[k - 1] if k else 0, blocks.exits[k]):
        hidden = b.inline(blocks.layers[i], f"layer{i + 1}_", {"hidden": hidden, **run.context}, nodes)[0]
    head = b.inline(blocks.heads[k], f"head{k + 1}_", {"hidden": hidden, "attention_mask": run.mask}, nodes)
    logits, conf = head[0], (head[1] if len(head) > 1 else None)

    def leave(body: _Body) -> tuple[str, str]:
        slot = b.const(body, [k], TensorProto.INT64, "slot")
        b.declare(body, slot, b.tensor(slot, TensorProto.INT64, [1]))
        return b.declare(body, b.op(body, "Identity", [logits], "result"), logits), slot

    if k == len(blocks.exits) - 1:
        return leave(nodes)
    done = _decide(b, nodes, signal, logits, conf, k, blocks.num_classes)  # [1]: If takes a 1-element cond
    here, later = _Body(), _Body()
    then = _branch(b, f"leave{k + 1}", here, list(leave(here)))
    following = _Running(hidden, run.mask, run.rows, run.context)
    other = _branch(
        b, f"continue{k + 1}", later, list(_stage_single(b, blocks, k + 1, following, signal, later))
    )
    logits_out, slots = _if(b, nodes, done, then, other, ["logits", "exit_slot"])
    return logits_out, slots


def _batch_state(b: _Builder, blocks: Blocks, nodes: _Body) -> tuple[str, tuple[str, str]]:
    """Row ids 0..B-1 and the batch outputs before any row left: logits zeros [B, C], exit slots -1 [B]."""
    batch = b.op(nodes, "Shape", ["input_ids"], "batch", start=0, end=1)
    zero, one = b.const(nodes, 0, TensorProto.INT64, "zero"), b.const(nodes, 1, TensorProto.INT64, "one")
    rows = b.op(nodes, "Range", [zero, b.op(nodes, "Squeeze", [batch], "rows_n"), one], "rows")
    b.declare(nodes, rows, b.tensor("rows", TensorProto.INT64, [None]))
    classes = b.const(nodes, [blocks.num_classes], TensorProto.INT64, "c")
    size = b.op(nodes, "Concat", [batch, classes], "size", axis=0)
    zeros = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    out = b.op(nodes, "ConstantOfShape", [size], "out", value=zeros)
    none = helper.make_tensor("none", TensorProto.INT64, [1], [-1])
    slots = b.op(nodes, "ConstantOfShape", [batch], "slots", value=none)
    b.declare(nodes, out, b.tensor("logits", TensorProto.FLOAT, [None, blocks.num_classes]))
    b.declare(nodes, slots, b.tensor("exit_slot", TensorProto.INT64, [None]))
    return rows, (out, slots)


def fuse(blocks: Blocks, signal: str = "maxprob", single_row: bool = False) -> onnx.ModelProto:
    """One ONNX graph running early exit with ``signal``: inputs the embed graph's token inputs and
    ``thresholds`` [K] (float64, one per exit; the last exit's is ignored); outputs ``logits`` [B, C]
    (float32, each row's logits at the exit it left from) and ``exit_slot`` [B] (int64, 0-based exit).

    ``single_row``: a graph for batches of ONE row (the server's and a latency benchmark's batch 1): at
    each exit it returns or goes on, without the compaction and scatter a batch needs.
    """
    if signal not in FUSABLE_SIGNALS:
        raise ValueError(f"signal {signal!r} cannot be fused; expected one of {', '.join(FUSABLE_SIGNALS)}")
    if signal == "learned" and not blocks.learned_exit:
        raise ValueError(
            "the 'learned' signal needs a model trained with learned-exit heads (learned_exit=True)"
        )
    b = _Builder(opsets={o.domain: o.version for o in blocks.embed.opset_import})
    nodes = _Body()
    stored = {init.name for init in blocks.embed.graph.initializer}
    inputs = [value for value in blocks.embed.graph.input if value.name not in stored]
    for value in inputs:
        b.types[value.name] = _unsized(value, value.name)
    outs = b.inline(blocks.embed, "embed_", {v.name: v.name for v in inputs}, nodes)
    context = {name[len("embed_") :]: name for name in outs[1:]}
    if not context:  # exported before embed.onnx returned the context
        feeds = {"hidden": outs[0], "attention_mask": "attention_mask"}
        context = {n[len("context0_") :]: n for n in b.inline(blocks.context, "context0_", feeds, nodes)}
    if single_row:
        result = _stage_single(b, blocks, 0, _Running(outs[0], "attention_mask", "", context), signal, nodes)
    else:
        rows, state = _batch_state(b, blocks, nodes)
        result = _stage(
            b, blocks, 0, _Running(outs[0], "attention_mask", rows, context), state, signal, nodes
        )
    nodes.append(helper.make_node("Identity", [result[0]], ["logits"]))
    nodes.append(helper.make_node("Identity", [result[1]], ["exit_slot"]))
    graph = helper.make_graph(
        list(nodes),
        "offramp_early_exit",
        [*inputs, helper.make_tensor_value_info("thresholds", TensorProto.DOUBLE, [len(blocks.exits)])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", blocks.num_classes]),
            helper.make_tensor_value_info("exit_slot", TensorProto.INT64, ["batch"]),
        ],
        initializer=nodes.initializers,
        value_info=nodes.value_info,
    )
    opsets = [helper.make_opsetid(domain, version) for domain, version in b.opsets.items()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=blocks.embed.ir_version)
