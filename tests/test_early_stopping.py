"""Validation every N steps and early stopping: when a stage stops, which weights it keeps, resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_train import FAST, TRAIN, VAL, assert_same_weights, factory
from transformers import BertTokenizerFast

import offramp.train as train_module
from offramp.cli.main import parse
from offramp.evaluate import ExitOutputs, scores_from_outputs, selection_score
from offramp.model import MultiExitModel
from offramp.train import RunSpec, TrainConfig, build_and_train

STEPS_PER_EPOCH = 4  # 64 rows, batch 16


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread


def scripted_scores(
    monkeypatch: pytest.MonkeyPatch, scores: list[float], losses: list[float] | None = None
) -> list[int]:
    """Validation returns ``scores`` (and ``losses``) in turn (every exit alike); returns the list of
    steps validated at."""
    calls: list[int] = []

    def fake(model: MultiExitModel, data: Any, *_: Any) -> list[dict]:
        at = min(len(calls), len(scores) - 1)
        calls.append(len(calls))
        loss = {"loss": losses[at]} if losses else {}
        return [{"exit": k + 1, "layer": layer, "metric": "accuracy", "score": scores[at], **loss}
                for k, layer in enumerate(model.exits)]  # fmt: skip

    monkeypatch.setattr(train_module, "per_exit_scores", fake)
    return calls


def test_patience_stops_after_that_many_evaluations_and_keeps_the_best_weights(
    tmp_path: Path, tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunSpec(model_factory=factory(tokenizer))
    cfg = TrainConfig(**{**FAST, "epochs": 10}, patience=2)
    calls = scripted_scores(monkeypatch, [0.5, 0.7, 0.7, 0.6, 0.9])  # best at epoch 2; 0.7 is no better
    model, log = build_and_train(TRAIN, VAL, tmp_path / "m", spec, cfg)
    assert len(calls) == 4 and len(log["epochs"]) == 4  # epochs 3 and 4 did not improve: stop
    assert [e.get("best", False) for e in log["epochs"]] == [True, True, False, False]
    assert log["epochs"][-1]["early_stop"] and "early_stop" not in log["epochs"][-2]
    assert log["stages"][0]["early_stopped"] == 4 * STEPS_PER_EPOCH
    assert log["best_val_score"] == pytest.approx(0.7)
    # The weights kept are those of epoch 2: the same run stopped right there (same 10-epoch schedule).
    at_best, _ = build_and_train(TRAIN, None, tmp_path / "b", spec, replace(cfg, patience=None, stop_after=8))
    assert_same_weights(model, at_best)
    assert_same_weights(model, MultiExitModel.load(tmp_path / "m"))


def test_loss_selection_stops_on_the_validation_loss_while_accuracy_still_rises(
    tmp_path: Path, tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunSpec(model_factory=factory(tokenizer))
    cfg = TrainConfig(**{**FAST, "epochs": 10}, patience=2, select_metric="loss")
    calls = scripted_scores(monkeypatch, [0.5, 0.6, 0.7, 0.8, 0.9], losses=[0.6, 0.4, 0.45, 0.5, 0.3])
    model, log = build_and_train(TRAIN, VAL, tmp_path / "m", spec, cfg)
    assert len(calls) == 4  # the loss was lowest at epoch 2 and rose twice: stop, whatever accuracy did
    assert [e.get("best", False) for e in log["epochs"]] == [True, True, False, False]
    assert log["best_val_score"] == pytest.approx(-0.4)
    at_best, _ = build_and_train(TRAIN, None, tmp_path / "b", spec, replace(cfg, patience=None, stop_after=8))
    assert_same_weights(model, at_best)


def test_eval_every_validates_within_epochs_and_stops_mid_epoch(
    tmp_path: Path, tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = RunSpec(model_factory=factory(tokenizer))
    cfg = TrainConfig(**{**FAST, "epochs": 5}, eval_every=3, patience=2)
    calls = scripted_scores(monkeypatch, [0.5, 0.6, 0.8, 0.7, 0.7, 0.1])
    model, log = build_and_train(TRAIN, VAL, tmp_path / "m", spec, cfg)
    # Steps 3, 4 (epoch end), 6 (best), 8 (epoch end), 9 (second without improvement): stop in epoch 3.
    assert [e["steps"] for e in log["evals"]] == [3, 6, 9]
    assert [e["steps"] for e in log["epochs"]] == [4, 8, 9] and log["epochs"][-1]["early_stop"]
    assert len(calls) == 5 and log["stages"][0]["early_stopped"] == 9
    at_best, _ = build_and_train(TRAIN, None, tmp_path / "b", spec, replace(cfg, patience=None, stop_after=6))
    assert_same_weights(model, at_best)


def test_an_evaluation_at_an_epochs_end_is_not_repeated(
    tmp_path: Path, tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = scripted_scores(monkeypatch, [0.5, 0.6, 0.7, 0.8])
    cfg = TrainConfig(**FAST, eval_every=2)  # 2 epochs of 4 steps: validations at steps 2, 4, 6, 8
    _, log = build_and_train(TRAIN, VAL, tmp_path / "m", RunSpec(model_factory=factory(tokenizer)), cfg)
    assert len(calls) == 4 and [e["steps"] for e in log["evals"]] == [2, 4, 6, 8]
    assert [e["val"][0]["score"] for e in log["epochs"]] == [0.6, 0.8]


def test_killed_and_resumed_with_early_stopping_matches_an_uninterrupted_run(
    tmp_path: Path, tokenizer: BertTokenizerFast
) -> None:
    spec = RunSpec(scheme="two-stage", model_factory=factory(tokenizer))
    cfg = TrainConfig(**{**FAST, "epochs": 4, "lr": 1e-3}, eval_every=3, patience=1)
    straight, log = build_and_train(TRAIN, VAL, tmp_path / "straight", spec, cfg)
    # Stage 1 stops at step 4 (epoch end); stage 2 validates at step 7 (best), stops at step 8.
    assert [s["early_stopped"] for s in log["stages"]] == [4, 8]
    kill = replace(cfg, save_every=7, stop_after=7)  # right after stage 2's first validation
    assert build_and_train(TRAIN, VAL, tmp_path / "k", spec, kill)[1]["stopped"] == 7
    resumed, log2 = build_and_train(TRAIN, VAL, tmp_path / "k", spec, replace(cfg, save_every=7), resume=True)
    assert_same_weights(straight, resumed)
    assert log["evals"] == log2["evals"] and log["epochs"] == log2["epochs"]
    with pytest.raises(ValueError, match="different run.*patience"):
        build_and_train(TRAIN, VAL, tmp_path / "k", spec, replace(kill, patience=3), resume=True)


def test_bad_settings_are_refused(tmp_path: Path, tokenizer: BertTokenizerFast) -> None:
    bad = (("patience", 0), ("eval_every", 0), ("kd_temperature", 0.0), ("kd_weight", 1.5))
    bad += (("select_metric", "f1"),)
    for field, value in bad:
        with pytest.raises(ValueError, match=f"{field} must be"):
            TrainConfig(**{field: value})
    with pytest.raises(ValueError, match="patience=2 .*needs validation data"):
        build_and_train(TRAIN, None, tmp_path / "m", RunSpec(model_factory=factory(tokenizer)),
                        TrainConfig(**FAST, patience=2))  # fmt: skip


def test_the_cli_default_recipe_is_early_stopped_training() -> None:
    args = parse(["train", "--task", "sst2", "--out", "x"])
    assert (args.epochs, args.patience, args.lr, args.eval_every) == (10.0, 2, 1e-4, None)
    from offramp.cli.train import _train_config

    assert _train_config(args).patience == 2
    assert _train_config(parse(["train", "--task", "sst2", "--out", "x", "--patience", "0"])).patience is None


def test_exit_scores_carry_each_exits_validation_loss() -> None:
    first, second = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[0.0, 3.0], [3.0, 0.0], [0.5, 0.0]]
    logits = np.array([first, second], np.float32)
    labels = np.array([0, 1, 1])
    outputs = ExitOutputs(logits=logits, labels=labels, exits=[1, 2])
    rows = scores_from_outputs(outputs, "sst2", regression=False)
    for k, row in enumerate(rows):
        z = logits[k] - logits[k].max(1, keepdims=True)
        expected = -np.mean((z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(3), labels])
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
    assert selection_score(rows, "last", "loss") == pytest.approx(-rows[1]["loss"])
    assert selection_score(rows, "mean", "score") == pytest.approx((2 / 3 + 0) / 2)  # exit 2 is all wrong
    with pytest.raises(ValueError, match="selection metric 'f1'"):
        selection_score(rows, "mean", "f1")
