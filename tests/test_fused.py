"""Early exit as one ONNX graph (offramp.fused, issue 13): same exits and labels as the per-block runtime.

A tiny random-weight BERT with learned-exit heads and MiniLM's real tokenizer, exported in fp32 and int8.
For every fusable signal and thresholds that spread the exits, the engine over the fused graph takes the
same exits, predictions and probabilities as the engine over the per-block graphs (``fused=False``), at
batch 1 and with compaction at batch 16 — int8 included, bit for bit, since both paths run the same
optimized kernels on the same rows. The fused graph is really what runs (the per-block layers are made
to fail), policies it cannot express fall back to the per-block path, and bad requests are clear errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_export import tiny_model
from transformers import AutoTokenizer

from offramp.data import default_glue_dir, load_glue
from offramp.engine import EarlyExitEngine
from offramp.evaluate import collect_exit_outputs
from offramp.export import export_onnx
from offramp.exported import EMBED_FILE, ExportedModel, optimized_graph
from offramp.fused import Blocks, fuse, fused_plan
from offramp.model import resolve_backbone
from offramp.policies import get_policy
from offramp.signals import get_signal

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm-l6"))
    model = tiny_model("bert", tokenizer)
    root = tmp_path_factory.mktemp("fused")
    dev = load_glue("sst2", default_glue_dir(), "dev").select(range(40))
    return {
        "fp32": export_onnx(model, root / "fp32", stock=False).folder,
        "int8": export_onnx(model, root / "int8", int8=True, stock=False).folder,
        "dev": dev,
    }


def _thresholds(signal: str, logits: np.ndarray, confidence: np.ndarray) -> list[float]:
    """Two thresholds between signal values of the non-final exits, far (> 1e-5) from every value, so
    float rounding (ONNX Runtime's softmax in the graph vs torch's in the per-block runtime) cannot decide
    a comparison."""
    values = get_signal(signal)(torch.as_tensor(logits[:-1]), torch.as_tensor(confidence[:-1]))
    values = np.unique(values.double().numpy().ravel())
    gaps = np.flatnonzero(np.diff(values) > 1e-5 * np.maximum(1.0, np.abs(values[:-1])))
    picks = gaps[(np.array([0.3, 0.7]) * (len(gaps) - 1)).astype(int)]
    return [float((values[i] + values[i + 1]) / 2) for i in picks]


def _engines(folder: Path) -> tuple[EarlyExitEngine, EarlyExitEngine, ExportedModel]:
    fused = ExportedModel.load(folder, threads=1)
    blocks = ExportedModel.load(folder, threads=1, fused=False)
    return EarlyExitEngine(fused), EarlyExitEngine(blocks), fused


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_fused_takes_the_per_block_exits(exports: dict[str, Any], kind: str) -> None:
    fused_engine, block_engine, model = _engines(exports[kind])
    data = exports["dev"]
    outputs = collect_exit_outputs(model, data, batch_size=1)
    spread = []
    for signal in ("maxprob", "entropy", "norm_entropy", "energy", "learned"):
        policy = get_policy(signal)
        assert fused_plan(policy, np.full(3, 0.5)).signal == signal
        for value in _thresholds(signal, outputs.logits, outputs.confidence):
            for batch_size in (1, 16):
                got = fused_engine.predict(data, policy, threshold=value, batch_size=batch_size)
                want = block_engine.predict(data, policy, threshold=value, batch_size=batch_size)
                msg = f"{kind} {signal} {value} batch {batch_size}"
                np.testing.assert_array_equal(got.exit_index, want.exit_index, err_msg=msg)
                np.testing.assert_array_equal(got.predictions, want.predictions, err_msg=msg)
                np.testing.assert_array_equal(got.layers_run, want.layers_run, err_msg=msg)
                np.testing.assert_array_equal(got.probabilities, want.probabilities, err_msg=msg)
                spread.append(got.exit_index)
    for k in (1, 2, 3):  # budget k: the max-prob graph with thresholds forcing exit k
        got = fused_engine.predict(data, "budget", threshold=k, batch_size=16)
        want = block_engine.predict(data, "budget", threshold=k, batch_size=16)
        assert (got.exit_index == k - 1).all()
        np.testing.assert_array_equal(got.predictions, want.predictions)
        np.testing.assert_array_equal(got.probabilities, want.probabilities)
    signals = ["energy", "entropy", "learned", "maxprob", "norm_entropy"]  # a batch graph and a one-row graph
    assert sorted(model._fused_graphs) == sorted([*signals, *(f"{s}/1" for s in signals)])
    assert len(np.unique(np.concatenate(spread))) == 3, "not every exit was taken: the test could not fail"


def test_fused_graph_is_what_runs_and_others_fall_back(exports: dict[str, Any], monkeypatch: Any) -> None:
    fused_engine, block_engine, model = _engines(exports["fp32"])
    data = exports["dev"].select(range(12))
    per_exit = get_policy("maxprob", tau=[0.55, 0.6, 0.0])  # one threshold per exit
    want = block_engine.predict(data, per_exit, batch_size=4)

    def no_blocks(*_: Any) -> Any:
        raise AssertionError("the per-block path ran")

    monkeypatch.setattr(model.adapter, "run_layer", no_blocks)
    got = fused_engine.predict(data, per_exit, batch_size=4)
    np.testing.assert_array_equal(got.exit_index, want.exit_index)
    # Policies the graph cannot express take the per-block path (which now fails, so it is seen).
    for policy in (
        get_policy("patience", t=1),
        get_policy("maxprob", tau=0.6, temperatures=[1.5, 1.0, 1.0]),
        get_policy("maxprob", tau=0.6, ensemble=True),
    ):
        assert fused_plan(policy, np.full(3, 0.6)) is None
        with pytest.raises(AssertionError, match="per-block path ran"):
            fused_engine.predict(data, policy, batch_size=4)


def test_fuse_rejects_what_it_cannot_compute(exports: dict[str, Any]) -> None:
    folder = exports["fp32"]
    model = ExportedModel.load(folder, threads=1)
    graph = optimized_graph(folder / EMBED_FILE, model.settings)
    blocks = Blocks(graph, graph, [], [], [1], 2, learned_exit=False)
    with pytest.raises(ValueError, match="signal 'bogus' cannot be fused; expected one of maxprob"):
        fuse(blocks, "bogus")
    with pytest.raises(ValueError, match="learned-exit heads"):
        fuse(blocks, "learned")
    assert model.fused_runner(get_policy("patience", t=2), torch.zeros(3)) is None
    assert not model.prepare_fused(get_policy("patience", t=2)) and not model._fused_graphs
    assert model.prepare_fused(get_policy("entropy", tau=0.5))
    assert sorted(model._fused_graphs) == ["entropy", "entropy/1"]


def test_server_on_an_export_prepares_and_runs_the_fused_graph(exports: dict[str, Any]) -> None:
    from starlette.testclient import TestClient

    from offramp.serve import ServeConfig, build_state, create_app

    model = ExportedModel.load(exports["int8"], threads=1)
    texts = exports["dev"].texts[:8]
    state = build_state(model, ServeConfig(), get_policy("maxprob", tau=0.55))
    assert sorted(model._fused_graphs) == ["maxprob", "maxprob/1"]  # built at start, before any request
    _, block_engine, _ = _engines(exports["int8"])
    want = block_engine.predict(texts, get_policy("maxprob", tau=0.55), batch_size=8)
    with TestClient(create_app(state)) as client:
        response = client.post("/predict", json={"inputs": texts})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [r["exit_layer"] for r in rows] == want.exit_layer.tolist()
    assert [r["label_id"] for r in rows] == want.predictions.tolist()


@pytest.mark.parametrize("family", ["distilbert", "mpnet", "deberta-v2"])
def test_other_families_fuse_exactly(family: str, tmp_path: Path) -> None:
    """Families whose attention context differs (no token types, MPNet's position bias, DeBERTa's
    relative positions) run fused with the per-block exits and outputs."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm-l6"))
    folder = export_onnx(tiny_model(family, tokenizer), tmp_path / family, stock=False).folder
    fused_engine, block_engine, model = _engines(folder)
    data = load_glue("sst2", default_glue_dir(), "dev").select(range(24))
    outputs = collect_exit_outputs(model, data, batch_size=1)
    spread = []
    for value in _thresholds("maxprob", outputs.logits, outputs.logits[..., 0]):
        for batch_size in (1, 8):
            got = fused_engine.predict(data, "maxprob", threshold=value, batch_size=batch_size)
            want = block_engine.predict(data, "maxprob", threshold=value, batch_size=batch_size)
            np.testing.assert_array_equal(got.exit_index, want.exit_index, err_msg=f"{family} {value}")
            np.testing.assert_array_equal(got.probabilities, want.probabilities)
            spread.append(got.exit_index)
    assert sorted(model._fused_graphs) == ["maxprob", "maxprob/1"]  # the fused graphs did run
    assert len(np.unique(np.concatenate(spread))) >= 2, "every input left at one exit: could not fail"
