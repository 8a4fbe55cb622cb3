"""``offramp serve``: an early-exit inference server with dynamic batching and a live speed knob.

Stack: Starlette on uvicorn. Starlette is the small, well-kept ASGI toolkit FastAPI is built on; this
server needs routing, streaming request bodies (for a byte cap) and a lifespan hook (to start and
drain the batcher), and nothing of FastAPI's pydantic layer — the two wire formats are parsed and
checked by hand in :mod:`.protocol` with error messages of our own. uvicorn is the reference ASGI
server, with graceful shutdown that lets requests in flight finish. prometheus-client renders
``/metrics``.

Modules: :mod:`.config` (settings), :mod:`.runner` (the model, shadow rows), :mod:`.batcher` (dynamic
batching, backpressure), :mod:`.control` (the speed knob and label-free control), :mod:`.protocol`
(KServe v2 and ``/predict`` formats), :mod:`.metrics` (Prometheus), :mod:`.page` (the playground),
:mod:`.app` (routes), :mod:`.server` (uvicorn, foreground or on a thread).

>>> state = build_state(load_any("runs/sst2"), ServeConfig(max_batch_size=32))
>>> with BackgroundServer(create_app(state)) as url: ...
"""

from .app import ServeState, build_state, create_app
from .config import ControlConfig, ServeConfig
from .server import BackgroundServer, run_server

__all__ = [
    "BackgroundServer",
    "ControlConfig",
    "ServeConfig",
    "ServeState",
    "build_state",
    "create_app",
    "run_server",
]
