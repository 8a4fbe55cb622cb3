"""ONNX export (issue 13): per-block graphs round-trip, run under the live runtime, and stay exact.

A tiny random-weight BERT with MiniLM's real tokenizer (so SST-2 sentences go through the engine and
``collect_exit_outputs`` unchanged) is exported once in fp32 and once in int8. fp32: every exit's logits
match eager to 1e-4, and the live runtime over the export takes exactly the exits ``simulate`` takes over
the export's own cached outputs, at batch 1 and with compaction at batch 16 (thresholds that survive a
tiny nudge, as in test_engine.py). int8: ONNX Runtime's dynamic quantization computes activation scales
per call, so live = simulated is guaranteed at batch size 1 only (see offramp.quantize).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_engine import stable_thresholds
from transformers import AutoModel, AutoTokenizer

from offramp.backbones import tiny_config
from offramp.data import default_glue_dir, load_glue
from offramp.engine import EarlyExitEngine
from offramp.evaluate import collect_exit_outputs
from offramp.export import check_exportable, check_format, export_full_onnx, export_onnx, ort_session
from offramp.exported import MANIFEST_FILE, ExportedModel, layer_file
from offramp.model import ExitConfig, ModelLoadError, MultiExitModel, resolve_backbone
from offramp.policies import get_policy
from offramp.simulate import simulate

GLUE_DIR = default_glue_dir()
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(family: str, tokenizer: Any = None, learned_exit: bool = True) -> MultiExitModel:
    """A tiny random-weight multi-exit model (vocabulary sized for ``tokenizer`` when given)."""
    torch.manual_seed(0)
    extra = {"vocab_size": tokenizer.vocab_size, "max_position_embeddings": 128} if tokenizer else {}
    encoder = AutoModel.from_config(tiny_config(family, **extra))
    config = ExitConfig(
        backbone="tiny", num_labels=2, exits=None, learned_exit=learned_exit, task="sst2", max_length=64
    )
    return MultiExitModel(config, encoder, tokenizer).eval()


def random_batch(vocab: int = 99, shape: tuple[int, int] = (5, 13)) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, shape, generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[3, 2:] = 0, 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm-l6"))
    model = tiny_model("bert", tokenizer)
    root = tmp_path_factory.mktemp("export")
    fp32 = export_onnx(model, root / "fp32")
    int8 = export_onnx(model, root / "int8", int8=True, stock=False)
    dev = load_glue("sst2", GLUE_DIR, "dev").select(range(48))
    return {"model": model, "fp32": fp32, "int8": int8, "dev": dev, "root": root}


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet"])
def test_round_trip_matches_eager(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    result = export_onnx(model, tmp_path / family)
    exported = ExportedModel.load(result.folder)
    batch = random_batch()
    with torch.no_grad():
        want = model(**batch)
    got = exported(**batch)
    assert got.logits.shape == want.logits.shape == (3 if family != "distilbert" else 2, 5, 2)
    np.testing.assert_allclose(got.logits.numpy(), want.logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(got.confidence.numpy(), want.confidence.numpy(), atol=1e-4)
    assert torch.equal(got.logits.argmax(-1), want.logits.argmax(-1))
    # The stock graph is the whole stock backbone (bench's baseline); real tokens match eager.
    uses_types = "token_type_ids" in exported.manifest.embed_inputs
    assert uses_types == (family == "bert")
    kwargs = batch if uses_types else {k: v for k, v in batch.items() if k != "token_type_ids"}
    with torch.no_grad():
        hidden = model.backbone(**kwargs).last_hidden_state
    stock = exported.backbone(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    np.testing.assert_allclose(stock[real].numpy(), hidden[real].numpy(), atol=1e-4)


def test_manifest_and_folder(bert: dict[str, Any]) -> None:
    folder = bert["fp32"].folder
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["exits"] == [1, 2, 3] and manifest["depth"] == 3 and manifest["int8"] is False
    assert manifest["family"] == "bert" and manifest["stock"] == "stock.onnx"
    assert set(manifest["files"]) == set(bert["fp32"].files)
    assert {"embed.onnx", "context.onnx", "layer_03.onnx", "head_3.onnx"} <= set(manifest["files"])
    assert "tokenizer.json" in manifest["tokenizer_files"] and (folder / "tokenizer.json").is_file()
    assert json.loads((folder / "offramp.json").read_text())["exits"] == [1, 2, 3]
    assert not any(folder.glob("*.safetensors"))  # loads without torch weights
    int8 = json.loads((bert["int8"].folder / MANIFEST_FILE).read_text())
    assert int8["int8"] is True and int8["stock"] is None


def test_fp32_live_runtime_matches_simulation(bert: dict[str, Any]) -> None:
    exported = ExportedModel.load(bert["fp32"].folder)
    data = bert["dev"]
    outputs = collect_exit_outputs(exported, data, batch_size=64)
    with torch.no_grad():
        eager = collect_exit_outputs(bert["model"], data, batch_size=64)
    np.testing.assert_allclose(outputs.logits, eager.logits, atol=1e-4)
    engine = EarlyExitEngine(exported)
    early = []
    for name in ("maxprob", "learned", "patience"):
        policy = get_policy(name)
        for value in stable_thresholds(policy, outputs.logits, outputs.confidence, count=2):
            sim = simulate(policy.with_threshold(value), outputs.logits, None, outputs.confidence)
            for batch_size in (1, 16):
                live = engine.predict(data, policy, threshold=value, batch_size=batch_size)
                np.testing.assert_array_equal(live.exit_index, sim.exit_slot[0], err_msg=f"{name} {value}")
                np.testing.assert_array_equal(live.predictions, sim.prediction[0])
                early.append(live.exit_index)
    slots = np.concatenate(early)
    assert len(np.unique(slots)) >= 2, "every input left at the same exit: the test could not fail"


def test_int8_export_runs_agrees_and_is_exact_at_batch_1(bert: dict[str, Any]) -> None:
    exported = ExportedModel.load(bert["int8"].folder)
    assert exported.int8
    data = bert["dev"].select(range(24))
    outputs = collect_exit_outputs(exported, data, batch_size=1)
    with torch.no_grad():
        eager = collect_exit_outputs(bert["model"], data, batch_size=1)
    diff = np.abs(outputs.logits - eager.logits)
    assert 0 < diff.max() < 0.05  # quantized (not bit-equal), yet close to fp32
    assert np.mean(outputs.logits.argmax(-1) == eager.logits.argmax(-1)) >= 0.9
    engine = EarlyExitEngine(exported)
    policy = get_policy("maxprob")
    grid = policy.grid(torch.as_tensor(outputs.logits), None, size=9).numpy()
    early = []
    for value in grid[1:-1:2].tolist():
        sim = simulate(policy.with_threshold(value), outputs.logits, None, return_probs=True)
        live = engine.predict(data, policy, threshold=value, batch_size=1)
        np.testing.assert_array_equal(live.exit_index, sim.exit_slot[0], err_msg=f"maxprob {value}")
        np.testing.assert_array_equal(live.predictions, sim.prediction[0])
        np.testing.assert_allclose(live.probabilities, sim.probs[0], atol=1e-6)
        early.append(live.exit_index)
    assert len(np.unique(np.concatenate(early))) >= 2, "every input left at the same exit"


def test_full_single_graph(bert: dict[str, Any]) -> None:
    model = bert["model"]
    path = export_full_onnx(model, bert["root"] / "full.onnx")
    session = ort_session(path)
    batch = random_batch(vocab=1000)
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    (logits,) = session.run(None, {k: batch[k].numpy() for k in names})
    with torch.no_grad():
        want = model(**batch).logits[-1]
    np.testing.assert_allclose(logits, want.numpy(), atol=1e-4)


def test_bad_inputs_are_clear_errors(bert: dict[str, Any], tmp_path: Path, monkeypatch: Any) -> None:
    with pytest.raises(ValueError, match=r"'tflite'.*onnx"):
        check_format("tflite")
    with pytest.raises(ModelLoadError, match=r"no onnx_export.json"):
        ExportedModel.load(tmp_path)
    with pytest.raises(ValueError, match=r"cannot export a str"):
        check_exportable("runs/x")
    monkeypatch.setattr("offramp.export.EXPORTABLE_FAMILIES", ("distilbert",))
    with pytest.raises(ValueError, match=r"family 'bert'.*distilbert"):
        check_exportable(bert["model"])
    # A graph that no longer matches its checksum is refused.
    import shutil

    broken = shutil.copytree(bert["int8"].folder, tmp_path / "broken")
    shutil.copyfile(broken / layer_file(1), broken / layer_file(0))
    with pytest.raises(ModelLoadError, match=r"layer_01.onnx.*checksums"):
        ExportedModel.load(broken)
    exported = ExportedModel.load(bert["int8"].folder)
    with pytest.raises(ValueError, match=r"no stock.onnx"):
        exported.backbone  # noqa: B018
    with pytest.raises(ValueError, match=r"--int8"):
        from offramp.quantize import quantize_model

        quantize_model(exported)


def test_cli_export_predict_and_policy(bert: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    from offramp.calibrate import save_policy
    from offramp.cli.main import main

    model_dir = bert["model"].save(tmp_path / "model")
    out = tmp_path / "onnx"
    assert main(["export", str(model_dir), "--format", "onnx", "--int8", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "max |logit difference|" in err and "graphs" in err
    assert ExportedModel.load(out).int8
    # An existing --out is refused without --overwrite; an unknown format is an error naming it.
    assert main(["export", str(model_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(model_dir), "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert "'tflite'" in capsys.readouterr().err
    assert main(["export", str(model_dir), "--out", str(out), "--overwrite", "--no-stock"]) == 0
    assert not ExportedModel.load(out).int8
    # Every MODEL_DIR command loads the export (load_any); calibrate's policy lands in its offramp.json.
    save_policy(out, {"name": "maxprob", "params": {"tau": 0.0}})
    texts = tmp_path / "in.txt"
    texts.write_text("a gripping film\nflat and dull\n")
    assert main(["predict", str(out), str(texts), "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["exit_layer"] for r in rows] == [1, 1]  # tau 0: everything leaves at the first exit
    assert main(["predict", str(out), str(texts), "--quantize", "int8"]) == 2
    assert "--int8" in capsys.readouterr().err


def test_embed_returns_the_context_and_fallback_matches(bert: dict[str, Any]) -> None:
    """``embed.onnx`` returns the batch's context with the hidden states (one session run); asked for
    another hidden/mask pair, ``layer_context`` runs ``context.onnx``, with the same values."""
    exported = ExportedModel.load(bert["fp32"].folder)
    adapter = exported.adapter
    assert [o for o in adapter._embed.outputs if o.startswith("ctx_")] == adapter._context.outputs
    batch = random_batch(vocab=1000)
    mask = batch["attention_mask"]
    session, runs = adapter._context.session, []

    class Counting:  # counts context.onnx runs
        def run(self, *args: Any) -> Any:
            runs.append(1)
            return session.run(*args)

    adapter._context.session = Counting()
    hidden = adapter.embed(batch["input_ids"], mask, batch["token_type_ids"])
    fused = adapter.layer_context(hidden, mask)
    assert runs == []
    again = adapter.layer_context(hidden, mask)  # handed out once: this one comes from context.onnx
    copied = adapter.layer_context(hidden.clone(), mask.clone())
    assert fused is not again and fused.keys() == again.keys() == copied.keys()
    for key in fused:
        np.testing.assert_array_equal(fused[key], again[key])
        np.testing.assert_array_equal(fused[key], copied[key])
    adapter.embed(batch["input_ids"], mask, batch["token_type_ids"])
    other = adapter.layer_context(hidden, mask)  # not the hidden embed just returned: recomputed
    for key in fused:
        np.testing.assert_array_equal(fused[key], other[key])
    assert len(runs) == 3


def test_shared_arena_is_an_option_and_changes_no_output(bert: dict[str, Any]) -> None:
    from offramp.exported import SessionSettings

    key = "session.use_env_allocators"
    assert SessionSettings().options().get_session_config_entry(key) == "1"
    with pytest.raises(RuntimeError):  # onnxruntime: no such entry
        SessionSettings(shared_arena=False).options().get_session_config_entry(key)
    batch = random_batch(vocab=1000)
    shared = ExportedModel.load(bert["fp32"].folder)(**batch)
    own = ExportedModel.load(bert["fp32"].folder, shared_arena=False)(**batch)
    assert own.logits.shape == (3, 5, 2)
    assert torch.equal(shared.logits, own.logits) and torch.equal(shared.confidence, own.confidence)
