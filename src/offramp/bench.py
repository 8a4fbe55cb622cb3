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

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .engine import EarlyExitEngine, EarlyExitResult, PreparedInputs, resolve_policy
from .metrics import primary_metric, task_metrics
from .model import ExitModel
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


def _deepest(model: Any) -> Any:
    """The member whose backbone and last head stock inference runs (the model, or a cascade's last)."""
    members = getattr(model, "members", None)
    return members[-1] if members is not None else model


def _stock_runner(model: Any, device: torch.device, prepared: PreparedInputs) -> Callable[[], None]:
    """Stock transformers inference of a MultiExitModel: AutoModel forward + its last exit head."""
    backbone, head = model.backbone, model.heads[-1]
    batches = [{k: v.to(device) for k, v in b.items() if k != "rows"} for b in prepared.batches]

    @torch.inference_mode()
    def run() -> None:
        for batch in batches:
            hidden = backbone(**batch).last_hidden_state
            head(hidden, batch["attention_mask"])

    return run


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


def _bench_batch_size(
    engine: EarlyExitEngine, texts: Any, labels: Any, batch_size: int, pols: tuple[Any, Any], opts: dict
) -> BatchTiming:
    """Warm up, time the methods and check the early-exit predictions, at one batch size.

    ``opts["stock"]``: method name -> the MultiExitModel whose stock inference it times.
    """
    pol, full_pol = pols
    prepared = engine.prepare(texts, batch_size)
    warm = PreparedInputs(prepared.batches[: opts["warmup_batches"]], prepared.num_rows, batch_size)
    runs: dict[str, Callable[[], Any]] = {
        "early_exit": lambda: engine.run(prepared, pol),
        "full": lambda: engine.run(prepared, full_pol),
    }
    for name, stock_model in opts["stock"].items():
        runs[name] = _stock_runner(stock_model, engine.device, prepared)
    if warm.batches:
        engine.run(warm, pol)
        engine.run(warm, full_pol)
        for stock_model in opts["stock"].values():
            _stock_runner(stock_model, engine.device, warm)()
    times = _time_methods(runs, opts["repeats"], opts.get("progress"))
    result, full_result = engine.run(prepared, pol), engine.run(prepared, full_pol)
    timing = BatchTiming(
        **engine.model.exit_costs.summary(result.exit_index),
        seconds={name: statistics.median(values) for name, values in times.items()},
        all_seconds=times,
        agreement_with_full=float(np.mean(result.predictions == full_result.predictions)),
    )
    if labels is not None:
        for key, value in _scores(opts.get("task"), result, full_result, labels).items():
            setattr(timing, key, value)
    return timing


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
) -> BenchResult:
    """Time early exit, the same-path full model and stock inference at each batch size.

    ``data``: a TextDataset or a list of texts (labels, when present, give task scores too).
    ``max_samples`` keeps the first N inputs (batch size 1 over a whole split takes a while).
    ``quantize="int8"``: early exit and full run a quantized copy of the (fp32) ``model``
    (:func:`~offramp.quantize.quantize_model`); ``stock`` stays fp32 and ``stock_int8`` times stock
    inference under the same quantization.
    """
    if repeats < 1:
        raise ValueError(f"repeats {repeats!r}: expected at least 1")
    if quantization_of(model) is not None:
        raise ValueError("benchmark() needs the fp32 model (and quantize='int8'), so stock fp32 is timed too")
    stock = {"stock": _deepest(model)}
    if quantize is not None:
        model = quantize_model(model, check_mode(quantize))
        stock[f"stock_{quantize}"] = _deepest(model)
    engine = EarlyExitEngine(model)
    pols = (resolve_policy(model, policy, threshold), resolve_policy(model, "budget", engine.num_exits))
    texts, labels = getattr(data, "texts", data), getattr(data, "labels", None)
    if max_samples is not None:
        texts = texts[:max_samples]
        labels = None if labels is None else labels[:max_samples]
    report = BenchResult(
        policy=pols[0].to_config(),
        examples=len(texts),
        exits=list(engine.exits),
        depth=int(engine.exits[-1]),
        stock_layers=int(engine.members[-1].adapter.num_layers),
        threads=torch.get_num_threads(),
        repeats=repeats,
        warmup_batches=warmup_batches,
        load_average_before=list(os.getloadavg()),
    )
    if quantize is not None:
        report.meta["quantize"] = quantize
    task = task or getattr(data, "task", None)
    total = len(batch_sizes) * repeats * (2 + len(stock))
    with progress_bar(total=total, desc="timing", unit="pass", enabled=progress) as bar:
        opts = {"repeats": repeats, "warmup_batches": warmup_batches, "task": task, "progress": bar}
        opts["stock"] = stock
        for batch_size in batch_sizes:
            report.batch_sizes[batch_size] = _bench_batch_size(engine, texts, labels, batch_size, pols, opts)
    report.load_average_after = list(os.getloadavg())
    return report


def format_report(report: BenchResult) -> str:
    """A short human-readable table of the benchmark figures."""
    policy = report.policy
    quantized = (
        f", early exit and full quantized {report.meta['quantize']}" if "quantize" in report.meta else ""
    )
    lines = [
        f"{report.examples} inputs, policy {policy['name']} {json.dumps(policy['params'])}, "
        f"{report.threads} threads, median of {report.repeats} runs{quantized}",
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
    return "\n".join(lines)


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,64"`` -> [1, 64]; anything else is an error naming the flag."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated positive integers like '1,64'")
    return sizes
