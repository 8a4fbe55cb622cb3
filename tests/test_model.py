"""MultiExitModel: heads, exits, save/load round trip, clear load errors, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from offramp import model as model_module
from offramp.backbones import UnsupportedBackboneError, tiny_config
from offramp.model import (
    ExitConfig,
    ModelLoadError,
    MultiExitModel,
    natural_pooling,
    parse_exits,
    resolve_backbone,
)

SENTENCES = ["a gripping, funny film", "dull.", "the plot never quite comes together, sadly"]


def encode(model: MultiExitModel) -> dict[str, torch.Tensor]:
    return dict(model.tokenizer(SENTENCES, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def minilm() -> MultiExitModel:
    torch.manual_seed(0)
    return MultiExitModel.from_backbone("minilm-l6", num_labels=2).eval()


def test_minilm_defaults_to_mean_pooling_and_every_layer(minilm: MultiExitModel) -> None:
    assert minilm.config.head == "mean"
    assert minilm.exits == [1, 2, 3, 4, 5, 6]
    assert natural_pooling(resolve_backbone("minilm-l6")) == "mean"


def test_full_forward_returns_every_exit(minilm: MultiExitModel) -> None:
    with torch.no_grad():
        out = minilm(**encode(minilm))
    assert out.logits.shape == (6, 3, 2)
    assert out.confidence is None
    # exits differ from each other: each head sees a different layer
    assert not torch.allclose(out.logits[0], out.logits[-1])


def test_last_exit_matches_stock_model_hidden_state(minilm: MultiExitModel) -> None:
    stock = AutoModel.from_pretrained(resolve_backbone("minilm-l6")).eval()
    batch = encode(minilm)
    with torch.no_grad():
        hidden = stock(**batch).last_hidden_state
        expected = minilm.heads[-1](hidden, batch["attention_mask"])[0]
        got = minilm(**batch).logits[-1]
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("head", ["cls", "pooler", "mean"])
def test_save_load_round_trip_gives_identical_logits(tmp_path: Path, head: str) -> None:
    torch.manual_seed(1)
    model = MultiExitModel.from_backbone(
        "minilm-l6", num_labels=3, exits="2,4,6", head=head, learned_exit=True
    )
    model.eval()
    batch = encode(model)
    with torch.no_grad():
        before = model(**batch)
    model.save(tmp_path / "m")
    loaded = MultiExitModel.load(tmp_path / "m")
    with torch.no_grad():
        after = loaded(**batch)
    assert loaded.exits == [2, 4, 6]
    assert loaded.config.head == head
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.confidence, after.confidence)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) >= ["backbone_config.json", "model.safetensors"]
    assert not list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.pt"))


def test_pooler_heads_start_from_the_checkpoint_pooler() -> None:
    model = MultiExitModel.from_backbone("minilm-l6", num_labels=2, head="pooler")
    pooler = model.backbone.pooler.dense.weight
    assert all(torch.equal(h.dense.weight, pooler) for h in model.heads)


def test_regression_model_round_trip(tmp_path: Path) -> None:
    model = MultiExitModel.from_backbone(
        "minilm-l6", num_labels=1, exits="3,6", problem_type="regression"
    ).eval()
    batch = encode(model)
    with torch.no_grad():
        before = model(**batch).logits
    assert before.shape == (2, 3, 1)
    model.save(tmp_path / "r")
    with torch.no_grad():
        after = MultiExitModel.load(tmp_path / "r")(**batch).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    "model_type", ["bert", "albert", "distilbert", "deberta-v2", "mpnet", "roberta", "electra"]
)
def test_tiny_families_round_trip(tmp_path: Path, model_type: str) -> None:
    torch.manual_seed(0)
    backbone = AutoModel.from_config(tiny_config(model_type))
    config = ExitConfig(backbone=model_type, num_labels=2, exits=None, head="cls")
    model = MultiExitModel(config, backbone).eval()
    ids = torch.randint(5, 90, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        before = model(ids, mask).logits
    assert before.shape[0] == model.adapter.num_layers
    model.save(tmp_path / model_type)
    with torch.no_grad():
        after = MultiExitModel.load(tmp_path / model_type)(ids, mask).logits
    assert torch.equal(before, after)


def test_parse_exits() -> None:
    assert parse_exits("1,3,6", 6) == [1, 3, 6]
    with pytest.raises(ValueError, match="expected increasing layer numbers"):
        parse_exits("6,1", 6)  # it used to be sorted silently into [1, 6] (issue 10)
    with pytest.warns(UserWarning, match="layers 4..6 of the backbone never run"):
        assert parse_exits("1,3", 6) == [1, 3]
    assert parse_exits(None, 4) == [1, 2, 3, 4]
    assert parse_exits("all", 2) == [1, 2]
    with pytest.raises(ValueError, match=r"\[7\] out of range: this backbone has layers 1..6"):
        parse_exits("1,7", 6)
    with pytest.raises(ValueError, match="'1,x'"):
        parse_exits("1,x", 6)
    with pytest.raises(ValueError, match="twice"):
        parse_exits("2,2", 6)


def test_layers_after_the_last_exit_are_never_run(minilm: MultiExitModel) -> None:
    model = MultiExitModel.from_backbone("minilm-l6", num_labels=2, exits="1,3").eval()
    calls = []
    for i, layer in enumerate(model.adapter.layers()):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    with torch.no_grad():
        out = model(**encode(model))
    assert model.depth == 3 and out.logits.shape[0] == 2
    assert calls == [0, 1, 2]


def test_unknown_backbone_and_architecture_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load backbone '.*no-such-model'"):
        MultiExitModel.from_backbone(str(tmp_path / "no-such-model"), num_labels=2)
    gpt2 = AutoModel.from_config(_gpt2_config())
    with pytest.raises(UnsupportedBackboneError, match="'gpt2'.*bert"):
        MultiExitModel(ExitConfig(backbone="gpt2", num_labels=2, exits=None), gpt2)


def _gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)


@pytest.fixture()
def saved(tmp_path: Path, minilm: MultiExitModel) -> Path:
    return minilm.save(tmp_path / "saved")


def test_load_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        MultiExitModel.load(tmp_path / "nope")


@pytest.mark.parametrize("name", ["offramp.json", "model.safetensors", "backbone_config.json"])
def test_load_missing_file(saved: Path, name: str) -> None:
    (saved / name).unlink()
    with pytest.raises(ModelLoadError, match=f"has no {name}"):
        MultiExitModel.load(saved)


def test_load_corrupt_config(saved: Path) -> None:
    (saved / "offramp.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt config"):
        MultiExitModel.load(saved)


def test_load_truncated_weights(saved: Path) -> None:
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cannot read model.safetensors"):
        MultiExitModel.load(saved)


def test_load_mismatched_weights(saved: Path) -> None:
    config = json.loads((saved / "offramp.json").read_text())
    config["exits"] = [1, 2, 3, 4, 5, 6, 6][:5]  # five heads for six saved ones
    (saved / "offramp.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="do not match its config"):
        MultiExitModel.load(saved)


def test_load_unknown_config_field(saved: Path) -> None:
    config = json.loads((saved / "offramp.json").read_text())
    config["surprise"] = 1
    (saved / "offramp.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="unknown fields.*surprise"):
        MultiExitModel.load(saved)


def test_failed_save_leaves_nothing(
    tmp_path: Path, minilm: MultiExitModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_module, "save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        minilm.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_model(saved: Path, minilm: MultiExitModel, monkeypatch) -> None:
    before = (saved / "model.safetensors").read_bytes()
    monkeypatch.setattr(
        model_module, "save_model", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError):
        minilm.save(saved)
    assert (saved / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["saved"]
