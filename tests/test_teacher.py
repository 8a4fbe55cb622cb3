"""Distillation from an external teacher: the KD formula, label checks, training, resume, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_train import FAST, TRAIN, VAL, VOCAB, assert_same_weights, factory, sentiment
from transformers import AutoModel, BertConfig, BertForSequenceClassification, BertTokenizerFast

from offramp.backbones import tiny_config
from offramp.checkpoint import find_checkpoint
from offramp.losses import teacher_kd_loss
from offramp.model import ExitConfig, MultiExitModel
from offramp.schemes import build_scheme
from offramp.teacher import TeacherError, teacher_logits
from offramp.train import RunSpec, TrainConfig, build_and_train

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread


def offramp_teacher(folder: Path, tokenizer: BertTokenizerFast, labels: list[str], seed: int = 1) -> Path:
    """A tiny random single-exit offramp model (the 'plain fine-tune') saved as a teacher folder."""
    torch.manual_seed(seed)
    encoder = AutoModel.from_config(tiny_config("bert", vocab_size=len(VOCAB)))
    config = ExitConfig(backbone="tiny", num_labels=len(labels), exits=[3], head="mean", label_names=labels)
    return MultiExitModel(config, encoder, tokenizer).save(folder)


def hf_teacher(folder: Path, tokenizer: BertTokenizerFast, id2label: dict[int, str] | None = None) -> Path:
    """A tiny Hugging Face sequence classifier with safetensors weights and its tokenizer."""
    torch.manual_seed(2)
    config = BertConfig(**tiny_config("bert", vocab_size=len(VOCAB)).to_dict())
    config.num_labels = 2
    if id2label is not None:
        config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# -- the formula ---------------------------------------------------------------------------------


def test_teacher_kd_loss_matches_a_hand_computation() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4, 5), torch.randn(4, 5)
    scheme_loss, weights, w, tau = torch.tensor(1.7), torch.tensor([1.0, 0.0, 2.0]), 0.3, 2.5
    kd = [
        F.kl_div(
            F.log_softmax(student[k] / tau, -1), F.log_softmax(teacher / tau, -1), log_target=True,
            reduction="batchmean",
        ) * tau**2
        for k in range(3)
    ]  # fmt: skip
    expected = (1 - w) * 1.7 + w * (1.0 * kd[0] + 2.0 * kd[2])
    got = teacher_kd_loss(scheme_loss, student, teacher, weights, weight=w, temperature=tau)
    assert torch.allclose(got, expected, atol=1e-6)
    # The teacher only teaches; a student equal to the teacher has nothing left to learn from it.
    same = teacher_kd_loss(scheme_loss, teacher.expand(3, 4, 5), teacher, weights, weight=1.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_teacher_kd_loss_for_regression_is_the_squared_error_to_the_teacher() -> None:
    student, teacher = torch.tensor([[[1.0], [2.0]], [[0.0], [4.0]]]), torch.tensor([[1.5], [2.0]])
    got = teacher_kd_loss(torch.tensor(0.0), student, teacher, torch.ones(2), 1.0, 5.0, regression=True)
    assert float(got) == pytest.approx(((0.5**2 + 0) + (1.5**2 + 2.0**2)) / 2)


def test_exit_weights_follow_each_schemes_own_mix(tokenizer: BertTokenizerFast) -> None:
    model = factory(tokenizer)([1, 3])
    assert build_scheme("joint", model).stages()[0].exit_mix(2).tolist() == [1.0, 1.0]
    assert build_scheme("weighted", model).stages()[0].exit_mix(2).tolist() == pytest.approx([1 / 3, 2 / 3])
    first, second = build_scheme("two-stage", model).stages()
    assert first.exit_mix(2).tolist() == [0.0, 1.0] and second.exit_mix(2).tolist() == [1.0, 0.0]


# -- loading and checking the teacher ----------------------------------------------------------


def test_teacher_logits_from_an_offramp_and_a_hugging_face_folder(
    tmp_path: Path, tokenizer: BertTokenizerFast
) -> None:
    folder = offramp_teacher(tmp_path / "t", tokenizer, ["neg", "pos"])
    got = teacher_logits(folder, VAL, max_length=24)
    model = MultiExitModel.load(folder)
    batch = tokenizer([t[0] for t in VAL.texts[:3]], padding=True, return_tensors="pt")
    with torch.no_grad():
        direct = model(batch["input_ids"], batch["attention_mask"]).logits[-1]
    assert got.logits.shape == (len(VAL), 2) and got.info.kind == "offramp"
    assert torch.allclose(got.logits[:3], direct, atol=1e-5)
    assert torch.equal(got.rows([2, 0]), got.logits[[2, 0]])
    hf = teacher_logits(hf_teacher(tmp_path / "hf", tokenizer), VAL, max_length=24)  # LABEL_0/1: unnamed
    assert hf.info.kind == "hf" and hf.logits.shape == (len(VAL), 2) and hf.info.label_names is None


def test_a_teacher_of_other_labels_is_refused_naming_both(
    tmp_path: Path, tokenizer: BertTokenizerFast
) -> None:
    three = offramp_teacher(tmp_path / "three", tokenizer, ["a", "b", "c"])
    with pytest.raises(TeacherError, match=r"3 labels.*training data has 2: \['neg', 'pos'\]"):
        teacher_logits(three, VAL)
    other = offramp_teacher(tmp_path / "other", tokenizer, ["pos", "neg"])
    with pytest.raises(
        TeacherError, match=r"labels \['pos', 'neg'\]; the training data has \['neg', 'pos'\]"
    ):
        teacher_logits(other, VAL)
    named = hf_teacher(tmp_path / "hf", tokenizer, {0: "yes", 1: "no"})
    with pytest.raises(TeacherError, match=r"\['yes', 'no'\]"):
        teacher_logits(named, VAL)
    with pytest.raises(TeacherError, match="not a folder"):
        teacher_logits(tmp_path / "nowhere", VAL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="neither offramp.json"):
        teacher_logits(tmp_path / "empty", VAL)
    # GLUE's 0/1 codes also match the task's readable names (an HF SST-2 model says negative/positive).
    glue = replace(sentiment(8), label_names=["0", "1"], task="sst2")
    readable = hf_teacher(tmp_path / "readable", tokenizer, {0: "NEGATIVE", 1: "positive"})
    assert teacher_logits(readable, glue, max_length=24).info.label_names == ["NEGATIVE", "positive"]


# -- training with a teacher ---------------------------------------------------------------------


def test_the_teacher_changes_the_loss_and_is_recorded(tmp_path: Path, tokenizer: BertTokenizerFast) -> None:
    teacher = offramp_teacher(tmp_path / "t", tokenizer, ["neg", "pos"])
    spec = RunSpec(scheme="weighted", model_factory=factory(tokenizer))
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    plain, log = build_and_train(TRAIN, VAL, tmp_path / "plain", spec, cfg)
    taught, log_t = build_and_train(TRAIN, VAL, tmp_path / "taught", spec, replace(cfg, teacher=str(teacher)))
    assert log["epochs"][0]["loss"] != pytest.approx(log_t["epochs"][0]["loss"], rel=1e-3)
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), taught.parameters(), strict=True))
    saved = json.loads((tmp_path / "taught" / "offramp.json").read_text())["info"]["teacher"]
    assert saved["path"] == str(teacher.resolve()) and saved["kind"] == "offramp"
    assert (saved["kd_temperature"], saved["kd_weight"]) == (2.0, 0.5) and len(saved["fingerprint"]) == 64
    # W = 0 leaves the scheme's loss alone: the same weights as without a teacher.
    off, _ = build_and_train(
        TRAIN, VAL, tmp_path / "w0", spec, replace(cfg, teacher=str(teacher), kd_weight=0.0)
    )
    assert_same_weights(plain, off)


def test_resume_with_a_teacher_is_bit_identical_and_refuses_another_teacher(
    tmp_path: Path, tokenizer: BertTokenizerFast
) -> None:
    teacher = hf_teacher(tmp_path / "t", tokenizer)
    spec = RunSpec(scheme="two-stage", model_factory=factory(tokenizer))
    cfg = TrainConfig(**FAST, teacher=str(teacher), kd_temperature=3.0, kd_weight=0.7)
    straight, log = build_and_train(TRAIN, VAL, tmp_path / "straight", spec, cfg)
    killed = replace(cfg, save_every=5, stop_after=5)  # mid-epoch 2 of stage 1 (4 steps per epoch)
    assert build_and_train(TRAIN, VAL, tmp_path / "k", spec, killed)[1]["stopped"] == 5
    other = offramp_teacher(tmp_path / "other", tokenizer, ["neg", "pos"])
    for changed in (replace(cfg, teacher=str(other)), replace(cfg, kd_weight=0.2)):
        with pytest.raises(ValueError, match="different run.*teacher"):
            build_and_train(TRAIN, VAL, tmp_path / "k", spec, replace(changed, save_every=5), resume=True)
    resumed, log2 = build_and_train(TRAIN, VAL, tmp_path / "k", spec, replace(cfg, save_every=5), resume=True)
    assert_same_weights(straight, resumed)
    assert [e["val"] for e in log["epochs"]] == [e["val"] for e in log2["epochs"]]
    assert find_checkpoint(tmp_path / "k.checkpoints") is not None


def test_cli_train_with_a_teacher(tmp_path: Path, tokenizer: BertTokenizerFast, capsys: Any) -> None:
    from offramp.cli import main
    from offramp.data import default_glue_dir

    backbone = tmp_path / "tiny"
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert", vocab_size=len(VOCAB))).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    common = [
        "--task", "sst2", "--data-dir", str(default_glue_dir()), "--backbone", str(backbone), "--epochs", "1",
        "--train-size", "32", "--val-size", "16", "--batch-size", "16", "--max-length", "24", "--no-progress",
    ]  # fmt: skip
    assert main(["train", *common, "--exits", "3", "--out", str(tmp_path / "plain")]) == 0
    argv = ["train", *common, "--exits", "1,3", "--scheme", "beem-kd", "--teacher", str(tmp_path / "plain")]
    assert main([*argv, "--kd-weight", "0.25", "--kd-temperature", "4", "--out", str(tmp_path / "s")]) == 0
    info = json.loads((tmp_path / "s" / "offramp.json").read_text())["info"]
    assert info["teacher"]["path"] == str((tmp_path / "plain").resolve())
    assert (info["teacher"]["kd_weight"], info["teacher"]["kd_temperature"]) == (0.25, 4.0)
    capsys.readouterr()
    assert main([*argv, "--kd-weight", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "kd_weight must be in [0, 1], got 2" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad")]) == 2
    assert "is not a folder" in capsys.readouterr().err
