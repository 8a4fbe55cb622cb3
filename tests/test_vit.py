"""The ViT adapter (issue 14): layer-by-layer runs equal the stock ``ViTModel``, rows stay independent.

A tiny random ViT (``tiny_config("vit")``: 8x8 grey images, 4 patches + CLS) on real sklearn digits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import ViTModel

from offramp.backbones import ViTAdapter, adapter_for, tiny_config
from offramp.data import load_digits


@pytest.fixture(scope="module")
def vit() -> ViTModel:
    torch.manual_seed(0)
    return ViTModel(tiny_config("vit", num_hidden_layers=4)).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return load_digits().pixels(range(0, 1797, 150))  # 12 real digits, normalised


def test_adapter_matches_stock_vit_at_every_layer(vit: ViTModel, pixels: torch.Tensor) -> None:
    adapter = adapter_for(vit)
    assert isinstance(adapter, ViTAdapter) and adapter.num_layers == 4
    assert adapter.image_size == (8, 8) and adapter.num_channels == 1
    with torch.inference_mode():
        stock = vit(pixel_values=pixels, output_hidden_states=True)
        hidden = adapter.embed_pixels(pixels)
        context = adapter.layer_context(hidden, None)
        assert torch.equal(hidden, stock.hidden_states[0]) and hidden.shape == (12, 5, 32)
        for i in range(adapter.num_layers - 1):
            hidden = adapter.run_layer(i, hidden, context)
            torch.testing.assert_close(hidden, stock.hidden_states[i + 1], rtol=0, atol=1e-6)
        last = adapter.run_layer(adapter.num_layers - 1, hidden, context)
        # the last layer includes the stock final LayerNorm: exactly last_hidden_state and the pooler
        torch.testing.assert_close(last, stock.last_hidden_state, rtol=0, atol=1e-6)
        torch.testing.assert_close(adapter.pooler()(last), stock.pooler_output, rtol=0, atol=1e-6)
        assert not torch.allclose(last, stock.hidden_states[-1], atol=1e-2)  # the LayerNorm did act
    assert len(stock.hidden_states) == 5


def test_rows_are_independent_so_compaction_is_exact(vit: ViTModel, pixels: torch.Tensor) -> None:
    """Dropping rows mid-network (what the live runtime does) leaves the kept rows' outputs unchanged."""
    adapter = adapter_for(vit)
    keep = torch.tensor([1, 4, 5, 10])
    with torch.inference_mode():
        full = adapter.embed_pixels(pixels)
        context = adapter.layer_context(full, None)
        for i in range(adapter.num_layers):
            full = adapter.run_layer(i, full, context)
        part = adapter.embed_pixels(pixels)
        for i in range(adapter.num_layers):
            if i == 2:
                part = part.index_select(0, keep)
                context = adapter.layer_context(part, None)
            part = adapter.run_layer(i, part, context)
    torch.testing.assert_close(part, full.index_select(0, keep), rtol=0, atol=1e-6)


def test_vit_takes_images_only_and_truncates(pixels: torch.Tensor) -> None:
    torch.manual_seed(1)
    model = ViTModel(tiny_config("vit")).eval()
    adapter = adapter_for(model)
    with pytest.raises(TypeError, match="embed_pixels"):
        adapter.embed(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"Input image size \(28\*28\)"):
        adapter.embed_pixels(torch.zeros(1, 1, 28, 28))
    assert adapter.truncate(2) and adapter.num_layers == 2 and len(model.layers) == 2
    with torch.inference_mode():
        stock = model(pixel_values=pixels)
        hidden = adapter.embed_pixels(pixels)
        for i in range(2):
            hidden = adapter.run_layer(i, hidden, {"mask": None})
    torch.testing.assert_close(hidden, stock.last_hidden_state, rtol=0, atol=1e-6)


@pytest.fixture(scope="module", params=["cls", "mean"])
def vit_exits(request: pytest.FixtureRequest) -> Any:
    """A 4-exit model on a tiny random ViT (CLS or mean-pooled exits), scaled so exits disagree and
    confidences spread (at the default 0.02 init every image gets nearly the same CLS vector)."""
    from offramp.evaluate import collect_exit_outputs
    from offramp.model import ExitConfig, MultiExitModel

    torch.manual_seed(2)
    backbone = ViTModel(tiny_config("vit", num_hidden_layers=4, initializer_range=0.5))
    config = ExitConfig(backbone="vit", num_labels=10, exits=[1, 2, 3, 4], head=request.param, dropout=0.0)
    model = MultiExitModel(config, backbone).eval()
    for head in model.heads:
        torch.nn.init.normal_(head.classifier.weight, std=1.0)
    logits = collect_exit_outputs(model, load_digits().subset(range(0, 1797, 37)), 64).logits
    with torch.no_grad():
        for head, exit_logits in zip(model.heads, logits, strict=True):
            head.classifier.weight.mul_(2.0 / float(exit_logits.std()))
    return model


@pytest.mark.parametrize("batch_size", [1, 16])
@pytest.mark.parametrize("name", ["maxprob", "patience"])
def test_live_runtime_matches_simulation(vit_exits: Any, name: str, batch_size: int) -> None:
    """The live runtime (rows compacted as they leave) exits and predicts exactly as simulate() says."""
    from offramp.engine import EarlyExitEngine
    from offramp.evaluate import collect_exit_outputs
    from offramp.policies import get_policy
    from offramp.simulate import simulate

    data = load_digits().subset(range(0, 1797, 37))  # 49 real digits
    outputs = collect_exit_outputs(vit_exits, data, batch_size=64)
    assert outputs.logits.shape == (4, 49, 10)
    if name == "maxprob":
        top = np.sort(torch.softmax(torch.from_numpy(outputs.logits), -1).amax(-1).numpy().ravel())
        gaps = np.diff(top)
        middle = np.argsort(gaps)[::-1]  # widest gaps first: a threshold there cannot flip on rounding
        values = [float(top[i] + gaps[i] / 2) for i in middle[:12] if 0.2 < i / len(top) < 0.8][:2]
    else:
        values = [1, 2]
    engine = EarlyExitEngine(vit_exits)
    prepared = engine.prepare(data, batch_size)
    slots = []
    for value in values:
        policy = get_policy(name).with_threshold(value)
        sim = simulate(policy, outputs.logits, return_probs=True)
        live = engine.run(prepared, policy)
        np.testing.assert_array_equal(live.exit_index, sim.exit_slot[0], err_msg=f"{name} at {value}")
        np.testing.assert_array_equal(live.predictions, sim.prediction[0])
        np.testing.assert_allclose(live.probabilities, sim.probs[0], atol=1e-5)
        slots.append(live.exit_index)
    assert len(np.unique(np.concatenate(slots))) >= 3, "exits did not spread: the test could not fail"
