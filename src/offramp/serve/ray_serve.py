"""``offramp[ray]``: the same server as a Ray Serve deployment, batched by Ray's ``@serve.batch``.

Nothing is written twice. Each replica loads the model once and serves offramp's own Starlette app
(:func:`.app.create_app`: ``/predict``, the KServe v2 routes, the policy route, ``/metrics``), so request
parsing, limits, errors and the speed knob are :mod:`.protocol`, :mod:`.control` and :mod:`.app` as in
``offramp serve``. Only batch *forming* changes: :class:`RayBatcher` lets ``@serve.batch``
(``max_batch_size`` requests or ``batch_wait_timeout_s``, whichever first) gather requests, then runs
:class:`~.batcher.DynamicBatcher`'s own batch step on one model thread — one engine call per policy
through the compacting runtime, each request its own rows, the knob and metrics fed as before.

Differences from ``offramp serve``: Ray counts a batch in *requests*, not texts (the engine still cuts
batches of ``max_batch_size`` rows); ``max_queue`` bounds the inputs inside a replica, and Ray queues
what its ``max_ongoing_requests`` holds back; label-free control, the policy route and ``/metrics`` are
per replica (a load balancer spreads them over replicas).

Ray is optional: it is imported only inside functions, so ``import offramp.serve.ray_serve`` works
without it.

>>> from ray import serve
>>> serve.run(build_deployment("runs/sst2", config=ServeConfig(max_batch_size=32)))
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..engine import EarlyExitResult
from ..model import ExitModel
from ..policies import Policy
from .batcher import DynamicBatcher, Job, Overloaded, RequestTimeout, ShuttingDown
from .config import ServeConfig
from .control import SpeedKnob
from .metrics import ServeMetrics
from .runner import ModelRunner

#: Wraps an ``async def f(jobs) -> outcomes`` into ``async def g(job) -> outcome`` (``serve.batch(...)``).
BatchDecorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def ray_serve() -> Any:
    """``ray.serve``, or an ImportError that says how to install it."""
    try:
        from ray import serve
    except ImportError as exc:
        raise ImportError("the Ray Serve deployment needs Ray Serve: pip install 'offramp[ray]'") from exc
    return serve


def ray_batch(config: ServeConfig) -> BatchDecorator:
    """Ray's ``@serve.batch`` with the server's ``max_batch_size`` and ``max_wait_ms``."""
    return ray_serve().batch(
        max_batch_size=config.max_batch_size, batch_wait_timeout_s=config.max_wait_ms / 1000.0
    )


class RayBatcher(DynamicBatcher):
    """A :class:`DynamicBatcher` whose batches are formed by ``batch`` (Ray's ``@serve.batch``).

    ``submit`` keeps the batcher's contract (429 past ``max_queue`` inputs, 504 after ``timeout_s``,
    503 once closing); the batch itself runs through the inherited ``_run_batch`` on the model thread.
    ``batch`` is injectable so the wiring can be tested without Ray.
    """

    def __init__(
        self,
        runner: ModelRunner,
        knob: SpeedKnob,
        metrics: ServeMetrics,
        config: ServeConfig,
        batch: BatchDecorator | None = None,
    ):
        super().__init__(runner, knob, metrics, config)
        self._batched = (batch or ray_batch(config))(self._run_jobs)

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offramp-model")
        self.running = True

    async def close(self) -> None:
        """Refuse new requests; let the model thread finish (Ray has already drained the replica)."""
        self._closing = True
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
        self.running = False

    async def submit(self, texts: list[Any], policy: Policy) -> EarlyExitResult:
        """Hand ``texts`` under ``policy`` to the batch queue and wait for their results (in order)."""
        if self._closing or not self.running:
            raise ShuttingDown("the replica is shutting down; retry on another replica")
        if self._queued + len(texts) > self.config.max_queue:
            raise Overloaded(
                f"overloaded: {self._queued} inputs are in this replica and this request adds {len(texts)} "
                f"(max_queue {self.config.max_queue}); retry later"
            )
        job = Job(texts, policy, asyncio.get_running_loop().create_future())
        self._count(len(texts))
        try:
            outcome = await asyncio.wait_for(self._batched(job), self.config.timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"request timed out after {self.config.timeout_s:g} s") from None
        finally:
            self._count(-len(texts))
        if isinstance(outcome, BaseException):  # this request's group failed in the model thread
            raise outcome
        return outcome

    def _count(self, delta: int) -> None:
        self._queued += delta
        self.metrics.queue.set(self._queued)

    async def _run_jobs(self, jobs: list[Job]) -> list[Any]:
        """One Ray batch: the batcher's batch step on the model thread; outcomes in the order of ``jobs``."""
        loop = asyncio.get_running_loop()
        outcomes = await loop.run_in_executor(self._executor, self._run_batch, jobs)
        by_job = {id(job): outcome for job, outcome in outcomes}
        return [by_job[id(job)] for job in jobs]


def replica_app(
    model: ExitModel,
    config: ServeConfig,
    policy: Policy | None = None,
    batch: BatchDecorator | None = None,
    sample: bool = False,
) -> Any:
    """offramp's Starlette app for a loaded ``model`` with :class:`RayBatcher` in place of the batcher."""
    from .app import build_state, create_app

    state = build_state(model, config, policy, sample=sample)
    state.batcher = RayBatcher(state.runner, state.knob, state.metrics, config, batch)
    return create_app(state)


class ReplicaApp:
    """The ASGI app Ray ships to each replica: a model folder and options, never the model itself.

    Its first call (the lifespan startup Ray Serve runs when a replica starts) loads the model and
    builds :func:`replica_app`; every call is then passed to that app.
    """

    def __init__(
        self,
        model_dir: str,
        config: ServeConfig,
        policy: dict[str, Any] | None = None,
        sample: bool = False,
        threads: int | None = None,
    ):
        self.model_dir, self.config, self.policy = model_dir, config, policy
        self.sample, self.threads = sample, threads
        self._app: Any = None

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if self._app is None:
            self._app = self.build()
        await self._app(scope, receive, send)

    def build(self) -> Any:
        """Load the model (once per replica) and build its app."""
        from ..cascade import load_any
        from ..policies import policy_from_config

        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        policy = None if self.policy is None else policy_from_config(self.policy)
        return replica_app(load_any(self.model_dir), self.config, policy, sample=self.sample)


class OfframpIngress:
    """The deployment class Ray wraps around :class:`ReplicaApp` (``serve.ingress``); it adds nothing."""


def build_deployment(
    model_dir: str | os.PathLike[str],
    *,
    config: ServeConfig | None = None,
    policy: Policy | dict[str, Any] | None = None,
    sample: bool = False,
    num_replicas: int = 1,
    num_cpus: float = 1.0,
    threads: int | None = None,
    max_ongoing_requests: int | None = None,
) -> Any:
    """A Ray Serve application serving ``model_dir`` with ``offramp serve``'s routes; ``serve.run`` it.

    ``config``: limits, batching (``max_batch_size`` requests per ``@serve.batch`` call, ``max_wait_ms``
    as its ``batch_wait_timeout_s``), the v2 model name (also the deployment's name) and label-free
    control, as for ``offramp serve``. ``policy``: the default exit policy (None: the model's own).
    ``num_cpus`` per replica; ``threads``: torch threads in each replica (None: Ray's setting).
    ``max_ongoing_requests`` (default twice ``max_batch_size``) must reach ``max_batch_size`` or Ray
    never hands a replica a full batch. ``model_dir`` must be readable at that path on every node.
    """
    serve = ray_serve()
    config = config or ServeConfig()
    folder = Path(model_dir).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {str(model_dir)!r} not found")
    if isinstance(policy, Policy):
        policy = policy.to_config()
    app = ReplicaApp(str(folder), config, policy, sample, threads)
    deployment = serve.deployment(
        serve.ingress(app)(OfframpIngress),
        name=config.name,
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=max_ongoing_requests or 2 * config.max_batch_size,
    )
    return deployment.bind()
