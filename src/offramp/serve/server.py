"""Running the app on uvicorn: in the foreground (the CLI) or on a background thread (tests, benchmarks).

uvicorn's shutdown (SIGINT/SIGTERM in the foreground, ``stop()`` in the background) stops accepting
connections, waits up to ``graceful_s`` for requests in flight to get their responses, then runs the
app's lifespan shutdown, which drains the batch queue: no accepted request is dropped.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

import uvicorn


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def uvicorn_config(
    app: Any, host: str, port: int, log_level: str = "info", graceful_s: int = 30
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=graceful_s,
        lifespan="on",
        # One model thread does the work; many idle keep-alive clients are cheap, bound them anyway.
        limit_concurrency=1024,
        backlog=512,
    )


def run_server(
    app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", graceful_s: int = 30
) -> None:
    """Serve until SIGINT/SIGTERM (blocking)."""
    uvicorn.Server(uvicorn_config(app, host, port, log_level, graceful_s)).run()


class BackgroundServer:
    """uvicorn on a daemon thread on 127.0.0.1 and a free port; ``with BackgroundServer(app) as url: ...``."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning"
    ):
        if not is_loopback(host):
            raise ValueError(f"host {host!r}: a background server binds to a loopback address only")
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, self.host, self.port, log_level, graceful_s=30))
        self.thread = threading.Thread(target=self.server.run, name="offramp-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout:g} s")
            time.sleep(0.02)
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful: in-flight requests finish, then the batcher drains and stops."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
