"""The HTTP routes: KServe v2, TEI-style ``/predict``, the policy admin route, ``/metrics``, the page.

Every handler runs inside :func:`_guarded`, which turns each error a client can cause into a JSON
``{"error": "..."}`` with a 4xx status (KServe v2's error shape), anything unexpected into a 500
without a traceback on the wire, and counts requests, errors and latency for ``/metrics``. Request
bodies are read with a byte cap, so a client cannot make the server buffer more than
``max_body_bytes``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..model import ExitModel
from ..policies import Policy, PolicyError
from .batcher import BatcherError, DynamicBatcher
from .config import ServeConfig
from .control import KnobError, SpeedKnob
from .metrics import CONTENT_TYPE, ServeMetrics
from .page import playground_html
from .protocol import (
    RequestError,
    check_outputs,
    load_json,
    parse_predict,
    parse_v2_infer,
    predict_response,
    v2_output_specs,
    v2_outputs,
)
from .runner import ModelRunner

log = logging.getLogger("offramp.serve")


@dataclass
class ServeState:
    """Everything the routes share: the model runner, the knob, the batcher, metrics and limits."""

    runner: ModelRunner
    knob: SpeedKnob
    batcher: DynamicBatcher
    metrics: ServeMetrics
    config: ServeConfig
    pair: bool | None
    task: str | None


def build_state(
    model: ExitModel,
    config: ServeConfig | None = None,
    policy: Policy | None = None,
    warmup: list[Any] | None = None,
    sample: bool = False,
) -> ServeState:
    """Wire a loaded model into a server state. ``policy``: the default (None: the model's own, else the
    final exit; with a control target and no policy of its own, maxprob). ``warmup``: unlabelled texts
    that seed the control window. ``sample``: collect the window even without a target."""
    from ..engine import resolve_policy
    from ..policies import get_policy

    config = config or ServeConfig()
    runner = ModelRunner(model, batch_size=config.max_batch_size)
    default = policy or resolve_policy(model, None)
    if policy is None and config.control.target_speedup is not None and default.kind == "budget":
        default = get_policy("maxprob", threshold=1.0)
    prepare = getattr(model, "prepare_fused", None)  # an exported model: build its one-graph runtime now
    if prepare is not None:
        prepare(default)
    knob = SpeedKnob(runner, default, config.control, sample=sample)
    if warmup:
        knob.seed(runner.all_exits(warmup))
    metrics = ServeMetrics(runner.exits, runner.costs.depth, config.speedup_window)
    metrics.set_policy(knob.default, knob.target)
    task = getattr(model.config, "task", None)
    return ServeState(
        runner, knob, DynamicBatcher(runner, knob, metrics, config), metrics, config, _is_pair(task), task
    )


def _is_pair(task: str | None) -> bool | None:
    if not task:
        return None
    from ..data import get_task_spec

    try:
        return len(get_task_spec(task).text_columns) == 2
    except ValueError:
        return None


def create_app(state: ServeState) -> Starlette:
    """The Starlette app for ``state``; the batcher starts and stops with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.close()  # uvicorn has already let in-flight requests finish

    h = _Handlers(state)
    routes = [
        Route("/", h.page, methods=["GET"]),
        Route("/predict", h.predict, methods=["POST"]),
        Route("/metrics", h.metrics, methods=["GET"]),
        Route("/v2", h.server_metadata, methods=["GET"]),
        Route("/v2/health/live", h.live, methods=["GET"]),
        Route("/v2/health/ready", h.ready, methods=["GET"]),
        Route("/v2/models/{name}", h.model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", h.model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", h.infer, methods=["POST"]),
        Route("/v2/models/{name}/policy", h.policy, methods=["GET", "PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.offramp = state
    return app


Handler = Callable[[Request], Awaitable[Response]]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Handlers:
    """Route handlers; each public one is wrapped by :func:`_guarded`."""

    def __init__(self, state: ServeState):
        self.s = state
        for attr in ("predict", "infer", "policy", "model_metadata", "model_ready"):
            setattr(self, attr, _guarded(state, attr, getattr(self, attr)))

    async def page(self, request: Request) -> Response:
        return HTMLResponse(playground_html(self.s.config.name))

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.s.batcher.running
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(self.s.metrics.render(), media_type=CONTENT_TYPE)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "offramp", "version": __version__, "extensions": ["binary_tensor_data"]})

    def _model(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.s.config.name:
            raise RequestError(404, f"unknown model {name!r}; this server serves {self.s.config.name!r}")

    async def model_ready(self, request: Request) -> Response:
        self._model(request)
        ok = self.s.batcher.running
        return JSONResponse({"name": self.s.config.name, "ready": ok}, status_code=200 if ok else 503)

    async def model_metadata(self, request: Request) -> Response:
        self._model(request)
        r = self.s.runner
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        if self.s.pair is not False:
            inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
        return JSONResponse(
            {
                "name": self.s.config.name,
                "versions": ["1"],
                "platform": "offramp",
                "inputs": inputs,
                "outputs": v2_output_specs(r.regression, r.num_labels),
                "parameters": {
                    "task": self.s.task,
                    "pair": self.s.pair,
                    "exits": r.exits,
                    "depth": r.costs.depth,
                    "exit_costs": list(r.costs.costs),
                    "cascade": r.is_cascade,
                    "label_names": r.label_names,
                },
            }
        )

    async def predict(self, request: Request) -> Response:
        parsed = parse_predict(await read_body(request, self.s.config), self.s.pair, self.s.config)
        policy = self.s.knob.resolve(parsed.params)
        result = await self.s.batcher.submit(parsed.texts, policy)
        return JSONResponse({"predictions": predict_response(result), "policy": policy.to_config()})

    async def infer(self, request: Request) -> Response:
        self._model(request)
        body = await read_body(request, self.s.config)
        header = request.headers.get("inference-header-content-length")
        parsed = parse_v2_infer(body, header, self.s.pair, self.s.config)
        regression = self.s.runner.regression
        if parsed.outputs is not None:
            check_outputs(parsed.outputs, regression)
        policy = self.s.knob.resolve(parsed.params)
        result = await self.s.batcher.submit(parsed.texts, policy)
        response: dict[str, Any] = {
            "model_name": self.s.config.name,
            "model_version": "1",
            "outputs": v2_outputs(result, parsed.outputs, regression),
            "parameters": {"policy": _json_str(policy)},
        }
        if parsed.request_id is not None:
            response["id"] = parsed.request_id
        return JSONResponse(response)

    async def policy(self, request: Request) -> Response:
        """GET: the default policy and controller state. PUT: change it without a restart."""
        self._model(request)
        knob = self.s.knob
        if request.method == "PUT":
            body = load_json(await read_body(request, self.s.config))
            if not isinstance(body, dict):
                raise RequestError(
                    422, 'expected a JSON object, e.g. {"threshold": 0.9} or {"target_speedup": 2}'
                )
            unknown = sorted(set(body) - {"policy", "threshold", "params", "speedup", "target_speedup"})
            if unknown:
                raise RequestError(
                    400,
                    f"unknown field {unknown[0]!r}; expected policy, threshold, params, "
                    "speedup or target_speedup",
                )
            if "target_speedup" in body:
                if "threshold" in body or "speedup" in body:
                    raise RequestError(
                        400, "target_speedup keeps choosing the threshold; drop threshold/speedup"
                    )
                policy = (
                    knob.resolve({"policy": body["policy"], "params": body.get("params")})
                    if "policy" in body
                    else None
                )
                knob.set_target(_target(body["target_speedup"]), policy)
            else:
                knob.set_policy(knob.resolve(body))
            self.s.metrics.set_policy(knob.default, knob.target)
        return JSONResponse(knob.state().to_json())


def _target(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"target_speedup {value!r}: expected a number >= 1.0 or null (stop control)")
    return float(value)


def _json_str(policy: Policy) -> str:
    import json

    return json.dumps(policy.to_config(), default=str)


def _guarded(state: ServeState, route: str, fn: Handler) -> Handler:
    """Errors a client caused -> 4xx JSON; anything else -> 500 JSON (logged); metrics either way."""
    metrics = state.metrics

    async def wrapper(request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await fn(request)
        except RequestError as exc:
            response = error(exc.status, str(exc))
        except KnobError as exc:
            response = error(exc.status, str(exc))
        except PolicyError as exc:
            response = error(400, str(exc))
        except BatcherError as exc:
            response = error(exc.status, str(exc))
        except Exception as exc:  # nothing a client sends may take the server down
            log.exception("error while handling %s", route)
            response = error(500, f"internal error: {exc.__class__.__name__}: {exc}")
        metrics.requests.labels(route=route).inc()
        if response.status_code >= 400:
            metrics.errors.labels(route=route, code=str(response.status_code)).inc()
        metrics.latency.labels(route=route).observe(time.perf_counter() - start)
        return response

    return wrapper


async def read_body(request: Request, config: ServeConfig) -> bytes:
    """The request body, refusing (413) anything over ``max_body_bytes`` without buffering it all."""
    limit = config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body over {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
    return b"".join(chunks)
