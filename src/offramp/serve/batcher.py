"""Dynamic batching: requests queue, and one worker gathers them into batches for the model thread.

As in Triton / TorchServe / Ray Serve: a batch closes when it holds ``max_batch_size`` inputs or
``max_wait_ms`` after its first request, whichever comes first; a request never splits across batches
(one larger than the batch size runs alone, cut into engine batches). Inside a batch, requests under
the same policy run as one engine call — that is where the compacting runtime pays off, since rows
that exit early leave the batch — and each request gets back exactly its own rows. The model runs on
one dedicated thread, so the event loop keeps answering health, metrics and new requests meanwhile,
and gathers the next batch while the current one computes.

Backpressure: the queue is bounded in *inputs* (``max_queue``); past it a request gets 429
"overloaded" at once. A request waiting longer than ``timeout_s`` gets 504 and its rows are skipped if
they have not started. ``close`` refuses new work (503) and finishes everything already queued.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import EarlyExitResult
from ..policies import Policy
from .config import ServeConfig
from .control import SpeedKnob, policy_key
from .metrics import ServeMetrics
from .runner import ModelRunner


class BatcherError(Exception):
    """A request the batcher will not run: ``status`` is the HTTP code to answer with."""

    status = 503


class Overloaded(BatcherError):
    status = 429


class RequestTimeout(BatcherError):
    status = 504


class ShuttingDown(BatcherError):
    status = 503


@dataclass(eq=False)
class Job:
    """One request's inputs waiting for the model."""

    texts: list[Any]
    policy: Policy
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Queues requests, forms batches, runs them on the model thread, hands each request its rows."""

    def __init__(self, runner: ModelRunner, knob: SpeedKnob, metrics: ServeMetrics, config: ServeConfig):
        self.runner, self.knob, self.metrics, self.config = runner, knob, metrics, config
        self._pending: collections.deque[Job] = collections.deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self.running = False

    @property
    def queued(self) -> int:
        """Inputs waiting (not yet handed to the model)."""
        return self._queued

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offramp-model")
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="offramp-batcher")
        self.running = True

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the worker and the model thread."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._worker is not None:
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.running = False

    async def submit(self, texts: list[Any], policy: Policy) -> EarlyExitResult:
        """Queue ``texts`` under ``policy`` and wait for their results (in order)."""
        if self._closing or not self.running:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if self._queued + len(texts) > self.config.max_queue:
            raise Overloaded(
                f"overloaded: {self._queued} inputs are queued and this request adds {len(texts)} "
                f"(max_queue {self.config.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        job = Job(texts, policy, loop.create_future())
        self._pending.append(job)
        self._queued += len(texts)
        self.metrics.queue.set(self._queued)
        assert self._wake is not None
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.config.timeout_s)
        except asyncio.TimeoutError:
            self._abandon(job)
            raise RequestTimeout(f"request timed out after {self.config.timeout_s:g} s") from None
        except asyncio.CancelledError:  # the handler was cancelled (client gone, forced shutdown)
            self._abandon(job)
            raise

    def _abandon(self, job: Job) -> None:
        """Nobody waits for ``job`` any more: drop it from the queue, or discard its results if running."""
        job.future.cancel()
        if job in self._pending:
            self._pending.remove(job)
            self._queued -= len(job.texts)
            self.metrics.queue.set(self._queued)

    # -- worker ---------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            jobs = await self._gather()
            jobs = [j for j in jobs if not j.future.done()]
            if not jobs:
                continue
            try:
                future = loop.run_in_executor(self._executor, self._run_batch, jobs)
            except RuntimeError:  # the executor is gone (interpreter exit): nothing can run any more
                outcomes = [(job, ShuttingDown("the server is shutting down")) for job in jobs]
            else:
                try:
                    outcomes = await future
                except Exception as exc:  # the model thread itself failed: fail this batch, keep serving
                    outcomes = [(job, exc) for job in jobs]
            for job, outcome in outcomes:
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    async def _gather(self) -> list[Job]:
        """Take jobs until the batch is full or ``max_wait_ms`` has passed since the first one."""
        assert self._wake is not None
        first = self._take()
        jobs, rows = [first], len(first.texts)
        deadline = time.monotonic() + self.config.max_wait_ms / 1000.0
        while rows < self.config.max_batch_size:
            if self._pending:
                if rows + len(self._pending[0].texts) > self.config.max_batch_size:
                    break  # it starts the next batch; requests never split
                job = self._take()
                jobs.append(job)
                rows += len(job.texts)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return jobs

    def _take(self) -> Job:
        job = self._pending.popleft()
        self._queued -= len(job.texts)
        self.metrics.queue.set(self._queued)
        return job

    def _run_batch(self, jobs: list[Job]) -> list[tuple[Job, Any]]:
        """On the model thread: one engine call per policy among ``jobs``; split results back per job."""
        groups: dict[str, list[Job]] = {}
        keys: dict[int, str] = {}  # most jobs share the default policy object: one key each
        for job in jobs:
            key = keys.get(id(job.policy)) or keys.setdefault(id(job.policy), policy_key(job.policy))
            groups.setdefault(key, []).append(job)
        outcomes: list[tuple[Job, Any]] = []
        for group in groups.values():
            texts = [t for job in group for t in job.texts]
            try:
                output = self.runner.run(texts, group[0].policy, self.knob.shadow_mask(len(texts)))
            except Exception as exc:  # reported to these requests only (500), never raised further
                outcomes.extend((job, exc) for job in group)
                continue
            self.knob.observe(output)
            self.metrics.observe_batch(output, len(texts))
            self.metrics.set_policy(self.knob.default, self.knob.target)
            start = 0
            for job in group:
                stop = start + len(job.texts)
                outcomes.append((job, slice_result(output.result, start, stop)))
                start = stop
        return outcomes


def slice_result(result: EarlyExitResult, start: int, stop: int) -> EarlyExitResult:
    """Rows ``start:stop`` of a result."""
    rows = slice(start, stop)
    probs = None if result.probabilities is None else np.ascontiguousarray(result.probabilities[rows])
    return EarlyExitResult(
        predictions=result.predictions[rows],
        probabilities=probs,
        exit_index=result.exit_index[rows],
        exit_layer=result.exit_layer[rows],
        layers_run=result.layers_run[rows],
        label_names=result.label_names,
        policy=result.policy,
    )
