"""The CIFAR ResNet backbone, the image path of the runtime (live = simulate), persistence and training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from offramp.data.images import ImageDataset, load_digits, load_mnist_sample
from offramp.engine import EarlyExitEngine
from offramp.evaluate import collect_exit_outputs, outputs_fingerprint
from offramp.model import MultiExitModel
from offramp.policies import get_policy
from offramp.resnet import ResNetConfig, build_resnet
from offramp.simulate import simulate
from offramp.train_images import ImageTrainConfig, augment, train_image_model


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist48() -> ImageDataset:
    """48 real MNIST-sample digits (a few of every class)."""
    return load_mnist_sample().subset(np.arange(0, 5000, 104)[:48])


def _resnet56(data: ImageDataset) -> MultiExitModel:
    """ResNet-56 with random blocks, BatchNorm statistics measured on ``data`` and every exit head fitted
    to ``data`` by ridge regression: deep exits agree, shallow ones less, so policies spread the exits."""
    torch.manual_seed(0)
    model = MultiExitModel.from_backbone("resnet56-cifar", 10, in_channels=1, label_names=data.label_names)
    model.config.pixel_mean, model.config.pixel_std = list(data.mean), list(data.std)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration pass
    pixels = model.pixel_values(data)
    model.train()
    with torch.no_grad():
        model(pixel_values=pixels)
    model.eval()
    targets = torch.nn.functional.one_hot(torch.as_tensor(data.labels), 10).float()
    with torch.no_grad():
        hidden = model.adapter.embed_pixels(pixels)
        for i, head in enumerate(model.heads):
            hidden = model.adapter.run_layer(i, hidden, {})
            feats = head.pool(hidden, None)
            ridge = feats.T @ feats + 3.0 * torch.eye(feats.shape[1])
            head.classifier.weight.copy_(4.0 * torch.linalg.solve(ridge, feats.T @ targets).T)
    return model


def test_resnet56_has_27_exits_with_stage_widths(mnist48: ImageDataset) -> None:
    model = _resnet56(mnist48)
    assert model.num_exits == 27 and model.exits == list(range(1, 28))
    widths = [head.classifier.in_features for head in model.heads]
    assert widths == [16] * 9 + [32] * 9 + [64] * 9
    # stem 1*16*9 + BN 32; 9 blocks 16ch, 9 blocks 32ch, 9 blocks 64ch (option A: no shortcut weights)
    stage = [9 * (2 * 16 * 16 * 9 + 64), 13824 + 128 + 8 * (2 * 9216 + 128), 55296 + 256 + 8 * (73728 + 256)]
    assert sum(p.numel() for p in model.backbone.parameters()) == 144 + 32 + sum(stage) == 852_080
    out = model(pixel_values=model.pixel_values(mnist48.subset(range(3))))
    assert out.logits.shape == (27, 3, 10) and out.confidence is None
    hidden = model.adapter.embed_pixels(torch.zeros(2, 1, 28, 28))
    shapes = []
    for i in range(27):
        hidden = model.adapter.run_layer(i, hidden, model.adapter.layer_context(hidden, None))
        shapes.append(tuple(hidden.shape[1:]))
    assert shapes[0] == (16, 28, 28) and shapes[9] == (32, 14, 14) and shapes[26] == (64, 7, 7)


def test_shortcuts_and_config_errors() -> None:
    a, b = build_resnet("resnet20-cifar"), build_resnet("resnet20-cifar", shortcut="B")
    assert a.config.num_hidden_layers == 9
    assert sum(p.numel() for p in b.parameters()) > sum(p.numel() for p in a.parameters())  # B projects
    x = torch.randn(2, 3, 32, 32)
    assert a(x).last_hidden_state.shape == b(x).last_hidden_state.shape == (2, 64, 8, 8)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ResNetConfig(depth=51)
    with pytest.raises(ValueError, match="expected \\[B, 3, H, W\\]"):
        a(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="in_channels"):
        MultiExitModel.from_backbone("bert-base-uncased", 2, in_channels=1)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_live_engine_equals_simulate_on_real_images(mnist48: ImageDataset, batch_size: int) -> None:
    model = _resnet56(mnist48)
    outputs = collect_exit_outputs(model, mnist48, batch_size=7)
    engine = EarlyExitEngine(model)
    z = torch.as_tensor(outputs.logits)
    policies = [get_policy("patience", t=2), get_policy("patience", t=4)]
    for name in ("pcee", "maxprob"):
        grid = get_policy(name).grid(z)
        policies += [get_policy(name, threshold=float(grid[len(grid) // 3]))]
    for policy in policies:
        live = engine.predict(mnist48, policy=policy, batch_size=batch_size)
        sim = simulate(policy, outputs.logits)
        assert len(np.unique(live.exit_index)) >= 3, policy  # rows really leave at different exits
        np.testing.assert_array_equal(live.exit_index, sim.exit_slot[0])
        np.testing.assert_array_equal(live.predictions, sim.prediction[0])
        np.testing.assert_array_equal(live.layers_run, live.exit_layer)


def test_engine_takes_tensors_and_rejects_bad_images(mnist48: ImageDataset) -> None:
    model = _resnet56(mnist48)
    engine = EarlyExitEngine(model)
    pixels = model.pixel_values(mnist48)
    policy = get_policy("patience", t=3)
    a = engine.predict(mnist48, policy=policy, batch_size=8)
    b = engine.predict(pixels, policy=policy, batch_size=5)
    np.testing.assert_array_equal(a.exit_index, b.exit_index)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    with pytest.raises(ValueError, match="expected \\[B, 1, H, W\\]"):
        engine.predict(torch.zeros(2, 3, 28, 28), policy=policy)
    with pytest.raises(ValueError, match="expected an ImageDataset or a float tensor"):
        engine.predict(["a sentence"], policy=policy)
    with pytest.raises(ValueError, match="takes images"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3))


def test_save_load_round_trip(mnist48: ImageDataset, tmp_path: Path) -> None:
    model = _resnet56(mnist48)
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "backbone_config.json").read_text())["model_type"] == "cifar-resnet"
    loaded = MultiExitModel.load(tmp_path / "m")
    assert loaded.config.pixel_mean == model.config.pixel_mean and loaded.tokenizer is None
    x = model.pixel_values(mnist48.subset(range(5)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    fingerprint = outputs_fingerprint(tmp_path / "m", mnist48, 128)
    assert fingerprint != outputs_fingerprint(tmp_path / "m", mnist48.subset(range(47)), 128)


def test_augment_crops_with_black_fill_and_flips() -> None:
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, 2, False, torch.tensor([-9.0]), gen)
    assert out.shape == x.shape and (out == -9.0).any() and (out == x).all(dim=(1, 2, 3)).any()
    kept = out[out != -9.0]
    assert set(kept.tolist()) <= set(range(16))
    flipped = augment(x, 0, True, torch.tensor([0.0]), gen)
    mirrored = (flipped == x.flip(3)).all(dim=(1, 2, 3))
    assert 0 < int(mirrored.sum()) < 64 and bool(((flipped == x).all(dim=(1, 2, 3)) | mirrored).all())


def test_tiny_training_lowers_the_loss(tmp_path: Path) -> None:
    digits = load_digits()
    train, val = digits.subset(range(0, 600)), digits.subset(range(1500, 1700))
    torch.manual_seed(0)
    model = MultiExitModel.from_backbone("resnet8-cifar", 10, in_channels=1)
    cfg = ImageTrainConfig(epochs=8, batch_size=32, lr=0.1, flip=False, crop_padding=1, progress=False)
    log = train_image_model(model, train, val, cfg, out_dir=tmp_path / "out")
    assert log.epochs[-1].train_loss < 0.7 * log.epochs[0].train_loss
    assert log.best_score is not None and log.best_score > 0.5  # 10 classes: chance is 0.1
    assert model.config.pixel_mean == list(train.mean)
    loaded = MultiExitModel.load(tmp_path / "out")
    assert loaded.config.info["train"]["best_epoch"] == log.best_epoch
    with pytest.raises(FileExistsError, match="overwrite"):
        train_image_model(model, train, val, cfg, out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="stage"):
        train_image_model(model, train, None, ImageTrainConfig(scheme="two-stage", progress=False))
