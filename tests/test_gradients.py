"""SWEET §3.1 conflicting-gradient analysis against a by-hand computation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from offramp.backbones import tiny_config
from offramp.cli import main
from offramp.data import default_glue_dir
from offramp.gradients import conflicting_gradients, last_feed_forward, row_cosine
from offramp.model import ExitConfig, MultiExitModel


def tiny_model(exits: str, model_type: str = "bert") -> MultiExitModel:
    torch.manual_seed(0)
    backbone = AutoModel.from_config(
        tiny_config(
            model_type, num_hidden_layers=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
    )
    return MultiExitModel(
        ExitConfig(backbone=model_type, num_labels=3, exits=exits, head="cls", dropout=0.0), backbone
    )


def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (6, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 0, 1, 2])}


def test_row_cosine() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, -1.0], [3.0, 0.0]])
    # rows: cos 1/sqrt2, -1, skipped (zero row in a)
    assert row_cosine(a, b) == pytest.approx((2**-0.5 - 1.0) / 2)


def test_last_feed_forward_is_the_ffn_output_matrix() -> None:
    model = tiny_model("1,2,4")
    assert last_feed_forward(model.adapter.layer_module(0)) is model.backbone.encoder.layer[0].output.dense
    distil = MultiExitModel(
        ExitConfig(backbone="d", num_labels=2, exits=None), AutoModel.from_config(tiny_config("distilbert"))
    )
    assert last_feed_forward(distil.adapter.layer_module(0)) is distil.backbone.transformer.layer[0].ffn.lin2


def test_similarities_match_separate_backward_passes() -> None:
    model = tiny_model("1,2,4")
    data = batch()
    results = conflicting_gradients(model, data)
    assert all(p.grad is None for p in model.parameters())  # the analysis leaves no gradients behind
    # layers 1 and 2 precede exits; layer 4 is the last layer and is left out
    assert [r.layer for r in results] == [1, 2]
    assert results[0].classifiers == [1, 2, 3] and results[1].classifiers == [2, 3]
    # by hand: one backward pass per classifier
    weight = model.backbone.encoder.layer[0].output.dense.weight
    grads = []
    for k in range(3):
        model.zero_grad()
        out = model(data["input_ids"], data["attention_mask"])
        torch.nn.functional.cross_entropy(out.logits[k], data["labels"]).backward()
        grads.append(weight.grad.clone())
    for i in range(3):
        for j in range(3):
            expected = torch.nn.functional.cosine_similarity(grads[i], grads[j], dim=1).mean().item()
            assert results[0].similarity[i][j] == pytest.approx(expected, abs=1e-5)


def test_single_exit_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an exit before the last layer"):
        conflicting_gradients(tiny_model("4"), batch())


def test_cli_gradients_on_a_fresh_minilm(tmp_path, capsys) -> None:
    out = tmp_path / "g.json"
    png = tmp_path / "g.png"
    glue = str(default_glue_dir())
    args = ["--exits", "2,6", "--task", "rte", "--data-dir", glue, "--batch-size", "4", "--max-length", "32"]
    code = main(["gradients", *args, "--json", str(out), "--plot", str(png)])
    assert code == 0
    assert "C-1" in capsys.readouterr().out
    assert png.stat().st_size > 1000 and '"layer": 2' in out.read_text()
