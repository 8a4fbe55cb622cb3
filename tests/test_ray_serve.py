"""The Ray Serve deployment and the KServe manifest, checked without Ray and without a cluster.

Ray is optional, so nothing here needs it: importing the module must not import Ray; the replica's app
(offramp's routes over :class:`RayBatcher`) is served with a stand-in for ``@serve.batch`` and must
answer as ``EarlyExitEngine.predict`` does; the KServe manifest and Dockerfile must name a command,
flags and probe routes that ``offramp serve`` has. ``benchmarks/ray_serve_check.py`` runs the real
deployment on a local Ray instance.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.routing import Match
from test_serve import _member, _tokenizer, post_all, texts

from offramp.cli.main import parse
from offramp.cli.serve import serve_config
from offramp.engine import EarlyExitEngine
from offramp.serve import BackgroundServer, ServeConfig
from offramp.serve.ray_serve import replica_app

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
DOCKERFILE = ROOT / "deploy" / "kserve" / "Dockerfile"

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The 4-layer random BERT of test_serve, an exit after every layer."""
    return _member(_tokenizer(tmp_path_factory.mktemp("vocab")), 4, [1, 2, 3, 4], seed=0, task="sst2")


def windowed_batch(sizes: list[int], wait_s: float = 0.05) -> Any:
    """A stand-in for ``@serve.batch``: one batch of whatever arrives within ``wait_s`` of its first
    call; records each batch's size in ``sizes``."""

    def decorate(fn: Any) -> Any:
        pending: list[tuple[Any, asyncio.Future]] = []

        async def flush() -> None:
            await asyncio.sleep(wait_s)
            batch = pending[:]
            pending.clear()
            sizes.append(len(batch))
            for (_, future), outcome in zip(batch, await fn([job for job, _ in batch]), strict=True):
                future.set_result(outcome)

        async def call(job: Any) -> Any:
            future = asyncio.get_running_loop().create_future()
            pending.append((job, future))
            if len(pending) == 1:
                asyncio.ensure_future(flush())
            return await future

        return call

    return decorate


def test_importing_the_module_does_not_import_ray() -> None:
    code = (
        "import sys, offramp.serve.ray_serve\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_without_ray_build_deployment_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from offramp.serve.ray_serve import build_deployment\n"
        f"build_deployment({str(tmp_path)!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "ImportError" in done.stderr and "pip install 'offramp[ray]'" in done.stderr


def test_replica_app_answers_like_the_engine(tiny: Any) -> None:
    """offramp's routes over RayBatcher: batched requests under mixed policies get their own rows."""
    sizes: list[int] = []
    app = replica_app(tiny, ServeConfig(max_batch_size=8), batch=windowed_batch(sizes))
    engine = EarlyExitEngine(tiny)
    policies = [{"policy": "maxprob", "threshold": 0.9}, {"policy": "budget", "threshold": 2}, {}]
    requests = [(texts(1 + i % 4, seed=i), policies[i % 3]) for i in range(12)]

    with BackgroundServer(app) as url:
        responses = post_all(url, requests)
        bad = httpx.post(f"{url}/predict", json={"inputs": "x", "parameters": {"policy": "nope"}})
        ready = httpx.get(f"{url}/v2/health/ready")
    for (sent, params), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        alone = engine.predict(sent, policy=params.get("policy"), threshold=params.get("threshold"))
        assert [r["label_id"] for r in got] == alone.predictions.tolist()
        assert [r["exit_layer"] for r in got] == alone.exit_layer.tolist()
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    assert ready.status_code == 200
    assert sum(sizes) == len(requests) and max(sizes) > 1  # requests shared batches


def container() -> tuple[str, dict[str, Any]]:
    """The InferenceService's name and its one predictor container."""
    (doc,) = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    (spec,) = doc["spec"]["predictor"]["containers"]
    return doc["metadata"]["name"], spec


def test_manifest_runs_offramp_serve_with_flags_it_has() -> None:
    name, spec = container()
    assert spec["command"] == ["offramp"]
    args = parse(spec["args"])  # argparse exits (SystemExit) on a flag offramp serve lacks
    assert (args.command, args.model_dir, args.host) == ("serve", "/mnt/models", "0.0.0.0")
    config = serve_config(args)  # the values pass offramp serve's own checks
    assert config.name == name  # /v2/models/<InferenceService name>/infer
    ports = [p["containerPort"] for p in spec["ports"]]
    assert ports == [args.port]
    assert {e["name"] for e in spec["env"]} >= {"STORAGE_URI"}  # fetched into /mnt/models
    assert {"cpu", "memory"} <= set(spec["resources"]["requests"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"]["port"] == args.port


def test_manifest_probes_and_v2_route_exist_in_offramp_serve(tiny: Any) -> None:
    name, spec = container()
    app = replica_app(tiny, ServeConfig(name=name), batch=windowed_batch([]))
    wanted = [
        ("GET", spec["readinessProbe"]["httpGet"]["path"]),
        ("GET", spec["livenessProbe"]["httpGet"]["path"]),
        ("POST", f"/v2/models/{name}/infer"),
    ]
    assert wanted[:2] == [("GET", "/v2/health/ready"), ("GET", "/v2/health/live")]
    for method, path in wanted:
        scope = {"type": "http", "method": method, "path": path}
        assert any(route.matches(scope)[0] == Match.FULL for route in app.routes), (method, path)


def test_dockerfile_pins_cpu_torch_and_starts_offramp_serve() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.M)
    assert "PIP_CONSTRAINT=" in text and 'echo "torch==${TORCH_VERSION}"' in text
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert entry == ["offramp"]
    args = parse(cmd)
    assert (args.command, args.model_dir, args.port) == ("serve", "/mnt/models", 8080)
