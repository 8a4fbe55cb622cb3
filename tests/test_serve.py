"""`offramp serve`: routes, batching, the speed knob, label-free control, limits, shutdown, metrics.

Everything runs on a tiny random-weight BERT (4 layers, an exit after each) with a small WordPiece
tokenizer built here, so the file needs no downloads and runs in seconds. Concurrency, the KServe v2
client round trip and graceful shutdown use a real uvicorn server on 127.0.0.1 (a free port); the
rest use Starlette's in-process TestClient. Where the model thread must be held busy (overload,
timeouts, shutdown with requests in flight) the runner is wrapped so that it waits on an Event.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from offramp.engine import EarlyExitEngine
from offramp.serve import BackgroundServer, ControlConfig, ServeConfig, build_state, create_app

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread

WORDS = (
    "good bad film movie great awful fun dull story actor plot funny boring moving slow fast best worst "
    "love hate music scene long short dark light warm cold smart silly"
).split()


# ---------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------
def _tokenizer(folder: Path) -> Any:
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))


def _member(tokenizer: Any, layers: int, exits: list[int], seed: int, task: str | None) -> Any:
    from transformers import AutoModel

    from offramp.backbones import tiny_config
    from offramp.model import ExitConfig, MultiExitModel

    torch.manual_seed(seed)
    config = tiny_config("bert", vocab_size=len(tokenizer), num_hidden_layers=layers)
    exit_config = ExitConfig(
        backbone="tiny", num_labels=2, exits=exits, task=task, label_names=["neg", "pos"]
    )
    model = MultiExitModel(exit_config, AutoModel.from_config(config), tokenizer)
    with torch.no_grad():
        for head in model.heads:
            head.classifier.weight.mul_(60.0)  # confident enough that the exits spread
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 4-layer random BERT with an exit after every layer, for SST-2 (single texts)."""
    tokenizer = _tokenizer(tmp_path_factory.mktemp("vocab"))
    return _member(tokenizer, 4, [1, 2, 3, 4], seed=0, task="sst2")


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) for _ in range(n)]


def make_app(model: Any, **overrides: Any) -> tuple[Any, Any]:
    control = overrides.pop("control", ControlConfig())
    policy = overrides.pop("policy", None)
    sample = overrides.pop("sample", False)
    state = build_state(model, ServeConfig(control=control, **overrides), policy, sample=sample)
    return state, create_app(state)


class Gate:
    """Wraps the runner so each model call waits until ``open()``; ``calls`` counts entries."""

    def __init__(self, state: Any):
        self.event, self.calls, self.rows, self._run = threading.Event(), 0, 0, state.runner.run
        state.runner.run = self.run

    def run(self, texts: list[Any], *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.rows += len(texts)
        assert self.event.wait(30), "the test never opened the gate"
        return self._run(texts, *args, **kwargs)

    def open(self) -> None:
        self.event.set()


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------------------
def post_all(url: str, requests: list[tuple[Any, dict[str, Any]]]) -> list[Any]:
    """POST every (inputs, parameters) to ``/predict`` at once; the responses in request order."""

    async def fire() -> list[Any]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            calls = [client.post("/predict", json={"inputs": t, "parameters": p}) for t, p in requests]
            return await asyncio.gather(*calls)

    return asyncio.run(fire())


def test_concurrent_distinct_requests_get_their_own_results(tiny: Any) -> None:
    state, app = make_app(tiny, max_batch_size=32, max_wait_ms=20)
    engine = EarlyExitEngine(tiny)
    policies = [{"policy": "maxprob", "threshold": 0.9}, {"policy": "budget", "threshold": 2}, {}]
    requests = [(texts(1 + i % 5, seed=i), policies[i % 3]) for i in range(36)]

    with BackgroundServer(app) as url:
        responses = post_all(url, requests)
    for (sent, params), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        alone = engine.predict(sent, policy=params.get("policy"), threshold=params.get("threshold"))
        assert [r["label_id"] for r in got] == alone.predictions.tolist()
        assert [r["exit_layer"] for r in got] == alone.exit_layer.tolist()
        probs = np.array([[r["probabilities"][n] for n in ("neg", "pos")] for r in got])
        np.testing.assert_allclose(probs, alone.probabilities, atol=1e-4)
    batches = state.metrics.batch_size.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    assert count < len(requests)  # requests were batched together, not run one by one


def test_overload_answers_429_and_timeouts_504(tiny: Any) -> None:
    from starlette.testclient import TestClient

    state, app = make_app(tiny, max_queue=6, max_texts=4, max_batch_size=2, max_wait_ms=0, timeout_s=2.0)
    gate = Gate(state)
    with TestClient(app) as client:
        results: list[Any] = []
        workers = [
            threading.Thread(
                target=lambda: results.append(client.post("/predict", json={"inputs": texts(2)}))
            )
            for _ in range(4)
        ]
        for w in workers:
            w.start()
        wait_for(lambda: gate.calls == 1 and state.batcher.queued == 6)  # 2 running, 6 queued
        over = client.post("/predict", json={"inputs": texts(2)})
        assert over.status_code == 429 and "overloaded" in over.json()["error"]
        for w in workers:
            w.join()
        assert sorted(r.status_code for r in results) == [504] * 4  # the gate held them past timeout_s
        assert "timed out" in results[0].json()["error"]
        gate.open()
        assert client.post("/predict", json={"inputs": texts(1)}).status_code == 200


# ---------------------------------------------------------------------------------------------------------
# the speed knob
# ---------------------------------------------------------------------------------------------------------
def test_knob_changes_move_the_exit_layers(tiny: Any) -> None:
    from starlette.testclient import TestClient

    _, app = make_app(tiny)
    batch = {"inputs": texts(6)}

    def layers(client: Any, params: dict[str, Any] | None = None) -> set[int]:
        body = {**batch, "parameters": params} if params is not None else batch
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        return {r["exit_layer"] for r in response.json()["predictions"]}

    with TestClient(app) as client:
        assert layers(client) == {4}  # no saved policy: the final exit
        assert layers(client, {"policy": "maxprob", "threshold": 0.0}) == {1}  # everyone is sure enough
        assert layers(client, {"policy": "budget", "threshold": 3}) == {3}
        assert layers(client, {"policy": {"name": "budget", "params": {"k": 2}}}) == {2}
        spread = layers(client, {"policy": "maxprob", "threshold": 0.97})
        assert len(spread) > 1  # a real threshold spreads inputs over exits
        put = client.put("/v2/models/offramp/policy", json={"policy": "budget", "threshold": 2})
        assert put.status_code == 200 and put.json()["policy"]["params"]["k"] == 2
        assert layers(client) == {2}  # the new default, without a restart
        assert layers(client, {"threshold": 1}) == {1}  # a threshold alone moves the default policy
        state = client.get("/v2/models/offramp/policy").json()
        assert state["threshold"] == 2 and state["target_speedup"] is None
        metrics = client.get("/metrics").text
        assert "offramp_policy_info{config=" in metrics and "offramp_policy_threshold 2.0" in metrics


def test_label_free_control_holds_the_target(tiny: Any) -> None:
    """With a target, the first window runs every exit, then the threshold is re-picked on it."""
    from starlette.testclient import TestClient

    control = ControlConfig(target_speedup=2.0, shadow_every=8, window=96, repick_every=32)
    state, app = make_app(tiny, control=control, max_batch_size=16)
    with TestClient(app) as client:
        assert state.knob.default.kind == "threshold"  # no saved policy: maxprob under control
        served = []
        for i in range(60):
            response = client.post("/predict", json={"inputs": texts(8, seed=100 + i)})
            served += response.json()["predictions"]
        knob = client.get("/v2/models/offramp/policy").json()
    assert knob["repicks"] >= 2 and knob["window_rows"] == 96
    assert knob["policy_target"] == pytest.approx(7 / 8 / (1 / 2 - 1 / 8))  # T' = (1-s)/(1/T - s)
    after = served[96:]  # after the first window (all full-depth: warm-up)
    assert all(r["layers_run"] == 4 for r in served[:96])
    compute = 4 * len(after) / sum(r["layers_run"] for r in after)
    assert compute == pytest.approx(2.0, rel=0.15)  # random tiny model, 384 inputs: a loose bound
    exit_speedup = 4 * len(after) / sum(r["exit_layer"] for r in after)
    assert exit_speedup > compute  # shadow rows cost the full model; the policy aims higher to pay for it


def test_per_request_speedup_needs_a_window_then_follows_it(tiny: Any) -> None:
    from starlette.testclient import TestClient

    _, app = make_app(tiny, control=ControlConfig(shadow_every=2, window=64, min_window=32), sample=True)
    with TestClient(app) as client:
        early = client.post("/predict", json={"inputs": texts(4), "parameters": {"speedup": 2.0}})
        assert early.status_code == 409 and "window" in early.json()["error"]
        for i in range(12):
            client.post("/predict", json={"inputs": texts(8, seed=200 + i)})
        fast = client.post("/predict", json={"inputs": texts(64, seed=9), "parameters": {"speedup": 3.0}})
        slow = client.post("/predict", json={"inputs": texts(64, seed=9), "parameters": {"speedup": 1.2}})
    assert fast.status_code == 200 and slow.status_code == 200

    def mean_exit(r: Any) -> float:
        return float(np.mean([p["exit_layer"] for p in r.json()["predictions"]]))

    assert mean_exit(fast) < mean_exit(slow)


# ---------------------------------------------------------------------------------------------------------
# bad requests
# ---------------------------------------------------------------------------------------------------------
V2 = "/v2/models/offramp/infer"
BAD = [
    ("/predict", b"{not json", 400, "not valid JSON"),
    ("/predict", {"texts": ["a"]}, 422, '"inputs"'),
    ("/predict", {"inputs": []}, 422, "no inputs"),
    ("/predict", {"inputs": [1, 2]}, 422, "inputs[0]"),
    ("/predict", {"inputs": ["good"] * 9}, 413, "limit is 8"),
    ("/predict", {"inputs": ["x" * 101]}, 413, "101 characters"),
    ("/predict", {"inputs": "good", "parameters": {"policy": "nope"}}, 400, "unknown policy 'nope'"),
    ("/predict", {"inputs": "good", "parameters": {"policy": "maxprob", "threshold": 7}}, 400, "tau"),
    ("/predict", {"inputs": "good", "parameters": {"speed": 2}}, 400, "unknown parameter 'speed'"),
    ("/predict", {"inputs": "good", "parameters": {"threshold": "high"}}, 400, "threshold"),
    ("/predict", {"inputs": "good", "parameters": {"speedup": 0.5}}, 400, ">= 1.0"),
    ("/predict", {"inputs": "good", "parameters": {"policy": "learned"}}, 400, "learned-exit heads"),
    ("/predict", {"inputs": "good", "parameters": ["x"]}, 400, "JSON object"),
    (V2, {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 422, "BYTES"),
    (
        V2,
        {"inputs": [{"name": "img", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
        422,
        "unknown input",
    ),
    (
        V2,
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
        422,
        "shape says 2",
    ),
    (
        V2,
        {"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]},
        422,
        "[N, 1]",
    ),
    (V2, {"inputs": "text"}, 422, "inputs"),
    (
        V2,
        {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
            "outputs": [{"name": "z"}],
        },
        422,
        "unknown output 'z'",
    ),
    ("/v2/models/other/infer", {"inputs": []}, 404, "unknown model 'other'"),
    ("/predict", b"[" * 50_000, 400, "too deeply"),
    ("/predict", b'{"inputs": "good", "parameters": {"threshold": 1' + b"0" * 400 + b"}}", 400, "parameters"),
    ("/predict", b'{"inputs": "good", "parameters": {"speedup": NaN}}', 400, "speedup"),
]


@pytest.mark.parametrize("path, body, status, message", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_a_clear_4xx(tiny: Any, path: str, body: Any, status: int, message: str) -> None:
    from starlette.testclient import TestClient

    _, app = make_app(tiny, max_texts=8, max_chars=100, max_queue=64)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with TestClient(app) as client:
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        assert client.post("/predict", json={"inputs": "good"}).status_code == 200  # still serving


def test_oversized_body_and_binary_garbage(tiny: Any) -> None:
    from starlette.testclient import TestClient

    _, app = make_app(tiny, max_body_bytes=1000)
    with TestClient(app) as client:
        big = client.post("/predict", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert big.status_code == 413 and "limit is 1000" in big.json()["error"]
        header = json.dumps(
            {
                "inputs": [
                    {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}
                ]
            }
        ).encode()
        broken = client.post(
            V2,
            content=header + b"\xff\xff\xff\x7fabcd",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert broken.status_code == 400 and "truncated" in broken.json()["error"]
        assert client.put("/v2/models/offramp/policy", json={"tau": 1}).status_code == 400
        assert client.get("/v2/health/live").json() == {"live": True}


# ---------------------------------------------------------------------------------------------------------
# KServe v2 with a real client, shutdown, metrics, page, cascade
# ---------------------------------------------------------------------------------------------------------
def test_kserve_v2_round_trip_with_tritonclient(tiny: Any) -> None:
    http = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    _, app = make_app(tiny)
    sent = texts(5, seed=3)
    expected = EarlyExitEngine(tiny).predict(sent, policy="maxprob", threshold=0.95)
    with BackgroundServer(app) as url:
        client = http.InferenceServerClient(url=url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("offramp")
        meta = client.get_model_metadata("offramp")
        assert [o["name"] for o in meta["outputs"]][:3] == ["label", "label_id", "probabilities"]
        for binary in (True, False):
            tensor = http.InferInput("text", [len(sent)], "BYTES")
            tensor.set_data_from_numpy(np.array(sent, dtype=object), binary_data=binary)
            wanted = [
                http.InferRequestedOutput(n, binary_data=binary)
                for n in ("label", "exit_layer", "probabilities")
            ]
            result = client.infer(
                "offramp", [tensor], outputs=wanted, parameters={"policy": "maxprob", "threshold": 0.95}
            )
            labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
            assert labels == [["neg", "pos"][i] for i in expected.predictions]
            np.testing.assert_array_equal(result.as_numpy("exit_layer"), expected.exit_layer)
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected.probabilities, atol=1e-4)
        with pytest.raises(InferenceServerException, match="unknown policy"):
            client.infer("offramp", [tensor], parameters={"policy": "nope"})
        client.close()


def test_shutdown_with_requests_in_flight_loses_none(tiny: Any) -> None:
    state, app = make_app(tiny, max_batch_size=4, max_wait_ms=0)
    gate = Gate(state)
    server = BackgroundServer(app)
    url = server.start()
    results: list[Any] = [None] * 12

    def send(i: int) -> None:
        results[i] = httpx.post(f"{url}/predict", json={"inputs": texts(2, seed=i)}, timeout=30)

    senders = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in senders:
        t.start()
    wait_for(lambda: gate.calls == 1 and gate.rows + state.batcher.queued == 24)  # every request is in
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.5)  # uvicorn notices should_exit and stops accepting; the requests are still in flight
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/health/live", timeout=5)
    gate.open()
    for t in senders:
        t.join(30)
    stopper.join(30)
    assert [r.status_code for r in results] == [200] * 12
    assert all(len(r.json()["predictions"]) == 2 for r in results)
    assert not server.thread.is_alive() and not state.batcher.running


def test_metrics_exposes_the_listed_series(tiny: Any) -> None:
    from starlette.testclient import TestClient

    _, app = make_app(tiny)
    with TestClient(app) as client:
        client.post(
            "/predict", json={"inputs": texts(5), "parameters": {"policy": "maxprob", "threshold": 0.95}}
        )
        client.post("/predict", content=b"{")
        text = client.get("/metrics").text
    for series in (
        'offramp_requests_total{route="predict"} 2.0',
        'offramp_request_errors_total{code="400",route="predict"} 1.0',
        'offramp_request_latency_seconds_bucket{le="0.002",route="predict"}',
        'offramp_batch_size_bucket{le="8.0"} 1.0',
        'offramp_exit_layer_bucket{le="4.0"} 5.0',
        "offramp_inputs_total 5.0",
        "offramp_policy_info{",
        "offramp_policy_threshold",
        "offramp_target_speedup 0.0",
        "offramp_realised_speedup",
        "offramp_exit_speedup",
        "offramp_queue_inputs 0.0",
    ):
        assert series in text, series


def test_playground_page_and_metadata(tiny: Any) -> None:
    from starlette.testclient import TestClient

    _, app = make_app(tiny)
    with TestClient(app) as client:
        page = client.get("/")
        meta = client.get("/v2/models/offramp").json()
    assert page.status_code == 200 and "offramp playground" in page.text and 'fetch("/predict"' in page.text
    assert meta["parameters"]["exits"] == [1, 2, 3, 4] and meta["parameters"]["pair"] is False


def test_serves_a_cascade_with_shadow_rows(tiny: Any) -> None:
    from starlette.testclient import TestClient

    from offramp.cascade import CascadeModel

    members = [_member(tiny.tokenizer, d, [d], seed=d, task="sst2") for d in (1, 2, 3)]
    cascade = CascadeModel(members, tiny.tokenizer).eval()
    _, app = make_app(cascade, control=ControlConfig(shadow_every=2), sample=True)
    sent = texts(10, seed=5)
    expected = EarlyExitEngine(cascade).predict(sent, policy="maxprob", threshold=0.9)
    with TestClient(app) as client:
        body = {"inputs": sent, "parameters": {"policy": "maxprob", "threshold": 0.9}}
        got = client.post("/predict", json=body).json()["predictions"]
    assert [r["exit_layer"] for r in got] == expected.exit_layer.tolist()
    shadow = got[1::2]  # one in two runs every member; it costs all of them (1 + 2 + 3 layers)
    assert all(r["layers_run"] == 6 for r in shadow)
    assert [r["layers_run"] for r in got[::2]] == expected.layers_run[::2].tolist()


# ---------------------------------------------------------------------------------------------------------
# CLI module
# ---------------------------------------------------------------------------------------------------------
def test_cli_module_parses_flags_and_names_bad_ones(tiny: Any, tmp_path: Path) -> None:
    import argparse

    from offramp.cli import serve as cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    own = cli.add_parser(sub)
    args = own.parse_args(["m", "--target-speedup", "2", "--max-batch-size", "8", "--window", "64"])
    config = cli.serve_config(args)
    assert (
        config.max_batch_size == 8
        and config.control.target_speedup == 2.0
        and config.control.shadow_every == 16
    )
    assert args.host == "127.0.0.1"
    for flags, message in (
        (["--max-batch-size", "0"], "--max-batch-size 0"),
        (["--target-speedup", "0.5"], "--target-speedup 0.5"),
        (["--port", "70000"], "--port 70000"),
    ):
        with pytest.raises(ValueError, match=message):
            cli.serve_config(own.parse_args(["m", *flags]))
    with pytest.raises((FileNotFoundError, ValueError), match="does not exist"):
        cli.run(own.parse_args([str(tmp_path / "missing")]))


def test_pair_inputs_parse_in_both_formats() -> None:
    from offramp.serve.protocol import RequestError, parse_predict, parse_v2_infer

    config = ServeConfig()
    one = parse_predict(b'{"inputs": ["a", "b"]}', True, config)
    assert one.texts == [("a", "b")]  # TEI: a flat pair is one input for a pair model
    assert parse_predict(b'{"inputs": [["a", "b"], ["c", "d"]]}', True, config).texts == [
        ("a", "b"),
        ("c", "d"),
    ]
    assert parse_predict(b'{"inputs": ["a", "b"]}', False, config).texts == ["a", "b"]
    with pytest.raises(RequestError, match="pair model expects"):
        parse_predict(b'{"inputs": ["a", "b", "c"]}', True, config)
    body = {
        "inputs": [
            {"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["c"]]},
            {"name": "text_pair", "shape": [2], "datatype": "BYTES", "data": ["b", "d"]},
        ]
    }
    assert parse_v2_infer(json.dumps(body).encode(), None, True, config).texts == [("a", "b"), ("c", "d")]
    with pytest.raises(RequestError, match="needs the input 'text_pair'"):
        parse_v2_infer(json.dumps({"inputs": body["inputs"][:1]}).encode(), None, True, config)
