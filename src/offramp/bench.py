"""Wall-clock benchmark: early exit against the full model, measured in one run on the same inputs.

For each batch size the split is tokenised and cut into padded batches once (sorted by length, the
same batches for every method; tokenisation is not timed), then three methods run interleaved, each
``repeats`` times after a warm-up, and the median wall-clock time of a full pass is kept:

* ``early_exit``: :class:`~offramp.engine.EarlyExitEngine` with the policy (default: the model's own);
* ``full``: the same engine and code path with the final-exit policy (every layer, one head);
* ``stock``: stock Hugging Face inference, ``AutoModel`` forward + the last exit head (the honest baseline);
* ``stock_int8`` (only with ``quantize="int8"``, when early exit and full run a quantized copy): the same
  stock inference under the same torch int8 dynamic quantization, the baseline a user would pick instead.

Reported per batch size: the layer-count speed-up of the early-exit run (COSEE eq. 12, plus PCEE eq. 4
and SWEET's cost fraction), the measured speed-ups t_full / t_early_exit and t_stock / t_early_exit,
their ratios to the layer-count speed-up (1.0 = the wall clock delivers every saved layer), and the
spread of the repeats (max / min per method): a large spread means the machine was busy and the
figures are not to be trusted (:meth:`BenchResult.unstable` names them).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .engine import EarlyExitEngine, EarlyExitResult, PreparedInputs, resolve_policy
from .metrics import primary_metric, task_metrics
from .model import ExitModel
from .policies import Policy, get_policy
from .progress import progress_bar
from .quantize import check_mode, quantization_of, quantize_model

METHODS = ("early_exit", "full", "stock")
#: Repeats of one method whose slowest is more than this many times its fastest are "unstable".
MAX_SPREAD = 1.5
#: Beyond this spread the measured speed-ups are not printed at all (the machine was far too busy).
WILD_SPREAD = 3.0


@dataclass
class BatchTiming:
    """Figures of one batch size (JSON keys as documented in the README's bench section)."""

    speedup: float
    saved_layers: float
    cost_fraction: float
    mean_layers: float
    exit_counts: list[int]
    seconds: dict[str, float]
    all_seconds: dict[str, list[float]]
    agreement_with_full: float
    metric: str | None = None
    score: float | None = None
    full_score: float | None = None
    #: Every method's score on the labels (empty without labels) and agreement with the full model.
    method_scores: dict[str, float] = field(default_factory=dict)
    method_agreement: dict[str, float] = field(default_factory=dict)
    #: Layer-count speed-up of each early-exit method (``early_exit`` and any runtime variants).
    method_layer_speedup: dict[str, float] = field(default_factory=dict)

    @property
    def layer_count_speedup(self) -> float:
        return self.speedup

    @property
    def spread(self) -> dict[str, float]:
        """Slowest ÷ fastest repeat per method (1.0 = perfectly steady)."""
        return {k: max(v) / min(v) for k, v in self.all_seconds.items()}

    def to_json(self, examples: int) -> dict[str, Any]:
        med = self.seconds
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        out["layer_count_speedup"] = self.speedup
        out["ms_per_input"] = {k: 1000 * v / examples for k, v in med.items()}
        out["inputs_per_second"] = {k: examples / v for k, v in med.items()}
        out["measured_speedup_vs_full"] = med["full"] / med["early_exit"]
        out["measured_speedup_vs_stock"] = med["stock"] / med["early_exit"]
        if "stock_int8" in med:
            out["measured_speedup_vs_stock_int8"] = med["stock_int8"] / med["early_exit"]
        #: early exit's speed-up over every method timed, and every method's over stock fp32.
        out["early_exit_speedup_vs"] = {k: v / med["early_exit"] for k, v in med.items()}
        out["speedup_vs_stock"] = {k: med["stock"] / v for k, v in med.items()}
        #: per early-exit method: t(its own full path) / t(it), and that ÷ its layer-count speed-up.
        out["measured_vs_own_full"] = {
            k: med["full" if k == "early_exit" else f"{k}_full"] / med[k] for k in self.method_layer_speedup
        }
        out["ratio_vs_own_full"] = {
            k: v / self.method_layer_speedup[k] for k, v in out["measured_vs_own_full"].items()
        }
        out["ratio_vs_full"] = out["measured_speedup_vs_full"] / self.speedup
        out["ratio_vs_stock"] = out["measured_speedup_vs_stock"] / self.speedup
        out["spread"] = self.spread
        return out


@dataclass
class BenchResult:
    """The whole benchmark: settings, machine load, and one :class:`BatchTiming` per batch size."""

    policy: dict[str, Any]
    examples: int
    exits: list[int]
    depth: int
    stock_layers: int
    threads: int
    repeats: int
    warmup_batches: int
    load_average_before: list[float]
    batch_sizes: dict[int, BatchTiming] = field(default_factory=dict)
    load_average_after: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def unstable(self, max_spread: float = MAX_SPREAD) -> list[str]:
        """'batch B method M: slowest/fastest = X' for every method whose repeats disagree too much."""
        return [
            f"batch {bs} {name}: slowest/fastest repeat = {s:.2f}"
            for bs, timing in self.batch_sizes.items()
            for name, s in timing.spread.items()
            if s > max_spread
        ]

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("batch_sizes", "meta")}
        out["timing"] = "median wall-clock seconds of one pass over all inputs; tokenisation excluded"
        out["batch_sizes"] = {str(bs): t.to_json(self.examples) for bs, t in self.batch_sizes.items()}
        return {**out, **self.meta}


@dataclass
class Method:
    """One timed way to label the prepared inputs: ``run`` is what the clock measures; ``predictions``
    (called once, after timing) gives its labels in input order, for its accuracy next to its latency."""

    run: Callable[[], Any]
    predictions: Callable[[], np.ndarray]
    #: A live-runtime method's full result (exits included), kept by its first ``predictions()`` call.
    result: EarlyExitResult | None = None


#: Extra full-model alternatives :func:`benchmark` can time next to early exit (``baselines=``):
#: ``attention``: stock transformers under each other attention implementation (sdpa / eager);
#: ``truncated``: the model cut at the exit nearest early exit's mean depth (the budget policy);
#: ``torch_int8``: stock inference under torch dynamic int8; ``ort_fp32`` / ``ort_int8``: the full model
#: exported as one ONNX graph, run by ONNX Runtime (int8: ORT dynamic quantization).
BASELINES = ("attention", "truncated", "torch_int8", "ort_fp32", "ort_int8")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def _deepest(model: Any) -> Any:
    """The member whose backbone and last head stock inference runs (the model, or a cascade's last)."""
    members = getattr(model, "members", None)
    return members[-1] if members is not None else model


def _in_input_order(parts: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> np.ndarray:
    """Per-batch (rows, logits) -> predictions in input order (argmax; the value for regression)."""
    out = np.zeros(n, dtype=np.float64)
    for rows, logits in parts:
        logits = logits.float().cpu()
        preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
        out[rows.numpy()] = preds.numpy()
    return out if parts and parts[0][1].shape[-1] == 1 else out.astype(np.int64)


def _stock_method(model: Any, device: torch.device, prepared: PreparedInputs) -> Method:
    """Stock transformers inference of a MultiExitModel: AutoModel forward + its last exit head."""
    backbone, head = model.backbone, model.heads[-1]
    batches = [{k: v.to(device) for k, v in b.items() if k != "rows"} for b in prepared.batches]

    @torch.inference_mode()
    def run() -> list[torch.Tensor]:
        return [
            head(backbone(**batch).last_hidden_state, batch.get("attention_mask"))[0]  # no mask: images
            for batch in batches
        ]

    def predictions() -> np.ndarray:
        rows = [b["rows"] for b in prepared.batches]
        return _in_input_order(list(zip(rows, run(), strict=True)), prepared.num_rows)

    return Method(run, predictions)


def _engine_method(engine: EarlyExitEngine, prepared: PreparedInputs, policy: Policy) -> Method:
    """The live runtime under ``policy`` (early exit, the same-path full model, or a fixed truncation)."""

    def predictions() -> np.ndarray:
        if method.result is None:
            method.result = engine.run(prepared, policy)
        return method.result.predictions

    method = Method(lambda: engine.run(prepared, policy), predictions)
    return method


def _ort_method(session: Any, prepared: PreparedInputs) -> Method:
    """One ONNX Runtime graph of the full model (its final head) over the same padded batches."""
    names = {i.name for i in session.get_inputs()}
    batches = [{k: v.numpy() for k, v in b.items() if k in names} for b in prepared.batches]

    def run() -> list[Any]:
        return [session.run(None, batch)[0] for batch in batches]

    def predictions() -> np.ndarray:
        rows = [b["rows"] for b in prepared.batches]
        parts = [(r, torch.from_numpy(x)) for r, x in zip(rows, run(), strict=True)]
        return _in_input_order(parts, prepared.num_rows)

    return Method(run, predictions)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _time_methods(
    runs: dict[str, Callable[[], Any]], repeats: int, progress: Any = None
) -> dict[str, list[float]]:
    """Time every method ``repeats`` times, interleaved and rotated so drift hits every method alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(_timed(runs[name]))
            if progress is not None:
                progress.update(1)
    return times


def _scores(task: str | None, result: EarlyExitResult, full: EarlyExitResult, labels: Any) -> dict[str, Any]:
    regression = result.probabilities is None
    metric = primary_metric(task, regression=regression)
    gold = np.asarray(labels)
    return {
        "metric": metric,
        "score": task_metrics(task, result.predictions, gold, regression=regression)[metric],
        "full_score": task_metrics(task, full.predictions, gold, regression=regression)[metric],
    }


def _truncated_policy(engine: EarlyExitEngine, prepared: PreparedInputs, policy: Policy) -> Policy:
    """The budget policy at the exit whose layer is nearest early exit's mean layers on these inputs."""
    mean_layers = float(np.mean(engine.run(prepared, policy).layers_run)) if prepared.num_rows else 0.0
    slot = int(np.argmin([abs(layer - mean_layers) for layer in engine.exits]))
    return get_policy("budget").with_threshold(slot + 1)


def _methods(setup: BenchSetup, prepared: PreparedInputs) -> dict[str, Method]:
    """Every method of one batch size, on the same prepared batches."""
    engine, (pol, full_pol) = setup.engine, setup.policies
    methods = {
        "early_exit": _engine_method(engine, prepared, pol),
        "full": _engine_method(engine, prepared, full_pol),
    }
    for name, stock_model in setup.stock.items():
        methods[name] = _stock_method(stock_model, engine.device, prepared)
    if "truncated" in setup.baselines:
        methods["truncated"] = _engine_method(engine, prepared, _truncated_policy(engine, prepared, pol))
    for name, session in setup.sessions.items():
        methods[name] = _ort_method(session, prepared)
    for name, (variant, v_pol, v_full) in setup.variants.items():
        methods[name] = _engine_method(variant, prepared, v_pol)
        methods[f"{name}_full"] = _engine_method(variant, prepared, v_full)
    return methods


def _layer_speedups(setup: BenchSetup, methods: dict[str, Method]) -> dict[str, float]:
    """Layer-count speed-up of every early-exit method (the main one and each variant's), from the
    results their ``predictions()`` kept."""
    engines = {"early_exit": setup.engine, **{name: v[0] for name, v in setup.variants.items()}}
    return {
        name: engine.model.exit_costs.summary(methods[name].result.exit_index)["speedup"]
        for name, engine in engines.items()
    }


def _accuracy(
    methods: dict[str, Method], task: str | None, labels: Any, full: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """(score per method, agreement with the full model per method); scores only with labels."""
    scores, agreement = {}, {}
    gold = None if labels is None else np.asarray(labels)
    for name, method in methods.items():
        preds = method.predictions()
        agreement[name] = float(np.mean(preds == full)) if len(full) else 1.0
        if gold is not None:
            regression = preds.dtype.kind == "f"
            metric = primary_metric(task, regression=regression)
            scores[name] = task_metrics(task, preds, gold, regression=regression)[metric]
    return scores, agreement


def _bench_batch_size(setup: BenchSetup, texts: Any, labels: Any, batch_size: int) -> BatchTiming:
    """Warm up, time every method interleaved, then score each one's predictions, at one batch size."""
    engine = setup.engine
    prepared = engine.prepare(texts, batch_size)
    warm = PreparedInputs(prepared.batches[: setup.warmup_batches], prepared.num_rows, batch_size)
    if warm.batches:
        for method in _methods(setup, warm).values():
            method.run()
    methods = _methods(setup, prepared)
    times = _time_methods({k: m.run for k, m in methods.items()}, setup.repeats, setup.progress)
    scores, agreement = _accuracy(methods, setup.task, labels, methods["full"].predictions())
    result, full_result = methods["early_exit"].result, methods["full"].result
    timing = BatchTiming(
        **engine.model.exit_costs.summary(result.exit_index),
        seconds={name: statistics.median(values) for name, values in times.items()},
        all_seconds=times,
        agreement_with_full=agreement["early_exit"],
        method_scores=scores,
        method_agreement=agreement,
        method_layer_speedup=_layer_speedups(setup, methods),
    )
    if labels is not None:
        for key, value in _scores(setup.task, result, full_result, labels).items():
            setattr(timing, key, value)
    return timing


@dataclass
class BenchSetup:
    """What every batch size shares: the engine and its two policies, the stock models and ORT sessions."""

    engine: EarlyExitEngine
    policies: tuple[Policy, Policy]
    stock: dict[str, Any]
    sessions: dict[str, Any]
    baselines: tuple[str, ...]
    repeats: int
    warmup_batches: int
    task: str | None
    progress: Any = None
    #: name -> (engine, its policy, its final-exit policy): early exit on other runtimes (int8, ONNX).
    variants: dict[str, tuple[EarlyExitEngine, Policy, Policy]] = field(default_factory=dict)


def check_baselines(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` if every one is a known baseline; else a ValueError naming the bad one and the choices."""
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; expected some of {', '.join(BASELINES)}")
    return tuple(dict.fromkeys(names))


def _attention_variants(member: Any) -> dict[str, Any]:
    """Copies of ``member`` whose backbone runs each attention implementation other than its own."""
    own = getattr(member.backbone.config, "_attn_implementation", None)
    out = {}
    for impl in ATTENTION_IMPLEMENTATIONS:
        if impl == own:
            continue
        variant = copy.deepcopy(member)
        try:
            variant.backbone.set_attn_implementation(impl)
        except (ValueError, ImportError):  # the family does not offer it
            continue
        if getattr(variant.backbone.config, "_attn_implementation", None) == impl:
            out[f"stock_{impl}"] = variant
    return out


def _stock_models(fp32: Any, quantized: Any, baselines: tuple[str, ...], quantize: str | None) -> dict:
    """Name -> the MultiExitModel whose stock inference is timed under that name."""
    stock = {"stock": _deepest(fp32)}
    if "attention" in baselines:
        stock.update(_attention_variants(_deepest(fp32)))
    if quantize is not None:
        stock[f"stock_{quantize}"] = _deepest(quantized)
    elif "torch_int8" in baselines:
        stock["stock_int8"] = _deepest(quantize_model(_deepest(fp32), "int8"))
    return stock


def _ort_sessions(fp32: Any, baselines: tuple[str, ...], folder: str) -> dict[str, Any]:
    """ONNX Runtime sessions of the full model exported as one graph, fp32 and/or int8."""
    wanted = [b for b in ("ort_fp32", "ort_int8") if b in baselines]
    if not wanted:
        return {}
    from .export import export_full_onnx
    from .exported import ort_session

    sessions = {}
    for name in wanted:
        path = os.path.join(folder, f"{name}.onnx")
        export_full_onnx(_deepest(fp32), path, int8=name == "ort_int8")
        sessions[name] = ort_session(path)
    return sessions


def benchmark(
    model: ExitModel,
    data: Any,
    batch_sizes: Sequence[int] = (1, 64),
    policy: Any = None,
    threshold: Any = None,
    repeats: int = 5,
    warmup_batches: int = 8,
    max_samples: int | None = None,
    task: str | None = None,
    progress: bool = False,
    quantize: str | None = None,
    baselines: Sequence[str] = (),
    variants: dict[str, tuple[ExitModel, Any]] | None = None,
) -> BenchResult:
    """Time early exit, the same-path full model, stock inference and any ``baselines`` per batch size.

    ``data``: a TextDataset or a list of texts (labels, when present, give every method's score too).
    ``max_samples`` keeps the first N inputs (batch size 1 over a whole split takes a while).
    ``quantize="int8"``: early exit and full run a quantized copy of the (fp32) ``model``
    (:func:`~offramp.quantize.quantize_model`); ``stock`` stays fp32 and ``stock_int8`` times stock
    inference under the same quantization. ``baselines``: names from :data:`BASELINES`.
    ``variants``: name -> (model, policy) for early exit on other runtimes (a quantized copy, an
    :class:`~offramp.exported.ExportedModel`), timed as ``name`` and ``name_full`` on the same batches.
    """
    if repeats < 1:
        raise ValueError(f"repeats {repeats!r}: expected at least 1")
    if quantization_of(model) is not None:
        raise ValueError("benchmark() needs the fp32 model (and quantize='int8'), so stock fp32 is timed too")
    chosen = check_baselines(baselines)
    fp32 = model
    if quantize is not None:
        model = quantize_model(model, check_mode(quantize))
    engine = EarlyExitEngine(model)
    pols = (resolve_policy(model, policy, threshold), resolve_policy(model, "budget", engine.num_exits))
    texts, labels = getattr(data, "texts", data), getattr(data, "labels", None)
    if max_samples is not None:
        texts = texts[:max_samples]
        labels = None if labels is None else labels[:max_samples]
    report = _empty_report(engine, pols[0], len(texts), repeats, warmup_batches)
    report.meta.update({"quantize": quantize} if quantize else {})
    with tempfile.TemporaryDirectory(prefix="offramp-bench-") as folder:
        setup = BenchSetup(
            engine, pols, _stock_models(fp32, model, chosen, quantize), _ort_sessions(fp32, chosen, folder),
            chosen, repeats, warmup_batches, task or getattr(data, "task", None),
            variants=_variant_engines(variants or {}),
        )  # fmt: skip
        report.meta["attention"] = getattr(_deepest(fp32).backbone.config, "_attn_implementation", None)
        n_methods = (
            2 + len(setup.stock) + len(setup.sessions) + ("truncated" in chosen) + 2 * len(setup.variants)
        )
        with progress_bar(total=len(batch_sizes) * repeats * n_methods, desc="timing", unit="pass",
                          enabled=progress) as bar:  # fmt: skip
            setup.progress = bar
            for batch_size in batch_sizes:
                report.batch_sizes[batch_size] = _bench_batch_size(setup, texts, labels, batch_size)
    report.load_average_after = list(os.getloadavg())
    return report


def _variant_engines(variants: dict[str, tuple[ExitModel, Any]]) -> dict[str, tuple]:
    """name -> (engine, its policy, its final-exit policy) for each early-exit runtime variant."""
    out = {}
    for name, (model, policy) in variants.items():
        engine = EarlyExitEngine(model)
        out[name] = (engine, resolve_policy(model, policy), resolve_policy(model, "budget", engine.num_exits))
    return out


def _empty_report(
    engine: EarlyExitEngine, policy: Policy, examples: int, repeats: int, warmup_batches: int
) -> BenchResult:
    return BenchResult(
        policy=policy.to_config(),
        examples=examples,
        exits=list(engine.exits),
        depth=int(engine.exits[-1]),
        stock_layers=int(engine.members[-1].adapter.num_layers),
        threads=torch.get_num_threads(),
        repeats=repeats,
        warmup_batches=warmup_batches,
        load_average_before=list(os.getloadavg()),
    )


def format_report(report: BenchResult) -> str:
    """A short human-readable table of the benchmark figures (and, with baselines, one row per method)."""
    policy = report.policy
    quantized = (
        f", early exit and full quantized {report.meta['quantize']}" if "quantize" in report.meta else ""
    )
    lines = [
        f"{report.examples} inputs, policy {policy['name']} {json.dumps(policy['params'])}, "
        f"{report.threads} thread{'s' if report.threads != 1 else ''}, "
        f"median of {report.repeats} runs{quantized}",
        f"{'batch':>5} {'layers x':>8} {'vs full':>8} {'vs stock':>8} {'ratio full':>10} {'ratio stock':>11} "
        f"{'ms/input ee':>11} {'full':>7} {'stock':>7} {'spread':>7}",
    ]
    for bs, timing in report.batch_sizes.items():
        e = timing.to_json(report.examples)
        ms = e["ms_per_input"]
        spread = max(timing.spread.values())
        if spread > WILD_SPREAD:
            lines.append(
                f"{bs:>5} {e['layer_count_speedup']:>7.2f}x  unreliable: repeats differ {spread:.1f}x "
                "(the machine was busy); no measured speed-up shown"
            )
            continue
        lines.append(
            f"{bs:>5} {e['layer_count_speedup']:>7.2f}x {e['measured_speedup_vs_full']:>7.2f}x "
            f"{e['measured_speedup_vs_stock']:>7.2f}x {e['ratio_vs_full']:>10.2f} "
            f"{e['ratio_vs_stock']:>11.2f} "
            f"{ms['early_exit']:>11.2f} {ms['full']:>7.2f} {ms['stock']:>7.2f} {spread:>7.2f}"
            + (
                f"   vs stock int8 {e['measured_speedup_vs_stock_int8']:.2f}x ({ms['stock_int8']:.2f} ms)"
                if "stock_int8" in ms
                else ""
            )
        )
    for bs, timing in report.batch_sizes.items():
        if timing.score is not None:
            lines.append(
                f"batch {bs}: {timing.metric} early exit {timing.score:.4f}, full {timing.full_score:.4f}, "
                f"agreement with full {timing.agreement_with_full:.3f}"
            )
    if "stock_is" in report.meta:
        lines.append(f"stock here: {report.meta['stock_is']}")
    lines.append(
        "layers x: layer-count speed-up; vs full / vs stock: measured speed-ups; ratio: measured ÷ "
        "layer-count (1.0 = every saved layer became saved time); spread: slowest ÷ fastest repeat"
    )
    if any(len(t.seconds) > len(METHODS) for t in report.batch_sizes.values()):
        lines += ["", *_method_table(report)]
    return "\n".join(lines)


def _method_table(report: BenchResult) -> list[str]:
    """Every method at every batch size: ms/input, speed-up over stock fp32, score, agreement."""
    lines = [
        f"{'method':<14} {'batch':>5} {'ms/input':>9} {'vs stock':>8} {'score':>7} {'agree':>6} {'spread':>7}"
    ]
    for bs, timing in report.batch_sizes.items():
        for name, seconds in timing.seconds.items():
            score = timing.method_scores.get(name)
            lines.append(
                f"{name:<14} {bs:>5} {1000 * seconds / report.examples:>9.3f} "
                f"{timing.seconds['stock'] / seconds:>7.2f}x "
                f"{'' if score is None else f'{score:.3f}':>7} "
                f"{timing.method_agreement.get(name, float('nan')):>6.3f} {timing.spread[name]:>7.2f}"
            )
    return lines


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,64"`` -> [1, 64]; anything else is an error naming the flag."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated positive integers like '1,64'")
    return sizes
