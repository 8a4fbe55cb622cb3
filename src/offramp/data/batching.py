"""Tokenisation and padding: the one path from texts to padded tensors.

Training and evaluation (:func:`tokenize`, :func:`make_loader`) and the live runtime
(``EarlyExitEngine.encode``/``prepare``) both turn texts into token lists with :func:`encode_texts`
(truncating to ``max_length``, with one :class:`TruncationWarning` per call) and token lists into
batches with :func:`pad_features`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import TextDataset
from .errors import DataError, TruncationWarning

__all__ = ["encode_texts", "pad_features", "tokenize", "make_loader", "PadCollator"]

#: Padding value per key; ``input_ids`` and ``token_type_ids`` take the tokenizer's, others 0.
_FILL = {"attention_mask": 0, "special_tokens_mask": 1}


def resolve_max_length(tokenizer: Any, max_length: int | None) -> int:
    """``max_length``, or the tokenizer's ``model_max_length`` (512 when unset or absurdly large)."""
    if max_length is None:
        max_length = getattr(tokenizer, "model_max_length", 512)
        if not isinstance(max_length, int) or max_length > 100_000:
            max_length = 512
    if max_length < 2:
        raise DataError(f"max_length {max_length!r}: expected at least 2 tokens")
    return int(max_length)


def _as_rows(rows: Sequence[str | Sequence[str]]) -> tuple[list[str], list[str] | None]:
    """First texts and (for pairs) second texts of rows holding one or two strings each."""
    rows = [(r,) if isinstance(r, str) else tuple(r) for r in rows]
    widths = {len(r) for r in rows}
    if len(widths) > 1 or not widths <= {1, 2}:
        raise DataError(f"rows hold {sorted(widths)} texts; expected 1 (single) or 2 (pair) in every row")
    first = [r[0] for r in rows]
    return first, ([r[1] for r in rows] if widths == {2} else None)


def encode_texts(
    tokenizer: Any,
    rows: Sequence[str | Sequence[str]],
    max_length: int | None = None,
    *,
    source: str | None = None,
    chunk_size: int = 4096,
    stacklevel: int = 2,
) -> list[dict[str, list[int]]]:
    """Tokenise rows of one or two texts (truncating to ``max_length``), without padding.

    Returns one dict per row (``input_ids``, ``attention_mask`` and ``token_type_ids`` when the
    tokenizer produces them). Emits a single :class:`TruncationWarning` counting the rows that were
    cut (``source`` names the data in it). ``max_length=None`` means the tokenizer's own limit.
    """
    max_length = resolve_max_length(tokenizer, max_length)
    first_all, second_all = _as_rows(rows)
    encoded: list[dict[str, list[int]]] = []
    n_truncated = 0
    for start in range(0, len(first_all), chunk_size):
        first = first_all[start : start + chunk_size]
        second = second_all[start : start + chunk_size] if second_all is not None else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length)
        keys = list(enc.keys())
        encoded.extend({k: enc[k][i] for k in keys} for i in range(len(first)))
        # Only rows that hit max_length can have been cut: re-tokenise those without truncation.
        full = [i for i in range(len(first)) if len(enc["input_ids"][i]) >= max_length]
        if full:
            again = tokenizer(
                [first[i] for i in full],
                [second[i] for i in full] if second is not None else None,
                truncation=False,
                verbose=False,
            )
            n_truncated += sum(len(ids) > max_length for ids in again["input_ids"])
    if n_truncated:
        where = f" of {source}" if source else ""
        warnings.warn(
            f"{n_truncated} of {len(first_all)} rows{where} were truncated to max_length={max_length} tokens",
            TruncationWarning,
            stacklevel=stacklevel,
        )
    return encoded


def tokenize(
    ds: TextDataset,
    tokenizer: Any,
    max_length: int | None = None,
    chunk_size: int = 4096,
    *,
    _stacklevel: int = 2,
) -> list[dict[str, list[int]]]:
    """Tokenise every row of ``ds`` once with :func:`encode_texts` (one warning names ``ds.source``)."""
    return encode_texts(
        tokenizer, ds.texts, max_length, source=ds.source, chunk_size=chunk_size, stacklevel=_stacklevel + 1
    )


def pad_features(
    features: Sequence[Mapping[str, Sequence[int]]],
    pad_id: int,
    *,
    pad_type_id: int = 0,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad per-row token lists to the longest row into ``int64`` tensors ``[rows, width]``.

    ``input_ids`` is padded with ``pad_id``, ``token_type_ids`` with ``pad_type_id``,
    ``special_tokens_mask`` with 1 and any other key with 0. ``attention_mask`` is always returned:
    the rows' own masks when they carry one, else 1 over each row's tokens. ``width`` is rounded up
    to a multiple of ``pad_to_multiple_of`` when given; ``padding_side`` is ``"right"`` or ``"left"``.
    """
    if not features:
        raise DataError("no rows to pad; expected at least one row")
    if padding_side not in ("right", "left"):
        raise DataError(f"padding_side {padding_side!r}: expected 'right' or 'left'")
    lengths = [len(f["input_ids"]) for f in features]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    keys = ["input_ids", "attention_mask"]
    keys += [k for k in features[0] if k not in keys]
    fill = {**_FILL, "input_ids": pad_id, "token_type_ids": pad_type_id}
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        array = np.full((len(features), width), fill.get(key, 0), dtype=np.int64)
        for j, (feature, n) in enumerate(zip(features, lengths, strict=True)):
            if key not in feature and key != "attention_mask":
                raise DataError(f"row {j} has no {key!r}; expected the keys of row 0 in every row")
            cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
            array[j, cols] = feature.get(key, 1)
        out[key] = torch.from_numpy(array)
    return out


class _EncodedRows(Dataset):
    """Pre-tokenised rows, each carrying its original position as ``index``."""

    def __init__(self, features: list[dict[str, list[int]]], labels: Sequence[int | float] | None):
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = dict(self.features[i])
        item["index"] = i
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


class PadCollator:
    """Pad rows with :func:`pad_features` the way ``tokenizer`` pads (its pad ids and side).

    Labels become a long (classification) or float (regression) tensor, row indices ``index``.
    """

    def __init__(self, tokenizer: Any, regression: bool, pad_to_multiple_of: int | None = None):
        self.pad_id = getattr(tokenizer, "pad_token_id", None)
        if self.pad_id is None:
            raise DataError("the tokenizer has no padding token (pad_token_id is None); expected one")
        self.pad_type_id = getattr(tokenizer, "pad_token_type_id", 0)
        self.padding_side = getattr(tokenizer, "padding_side", "right")
        self.regression = regression
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        feats = [{k: v for k, v in r.items() if k not in ("index", "labels")} for r in rows]
        batch = pad_features(
            feats,
            self.pad_id,
            pad_type_id=self.pad_type_id,
            padding_side=self.padding_side,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        if "labels" in rows[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=dtype)
        batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        return batch


def make_loader(
    ds: TextDataset,
    tokenizer: Any,
    batch_size: int = 32,
    max_length: int | None = 128,
    shuffle: bool = False,
    seed: int = 0,
    sort_by_length: bool = False,
    num_workers: int = 0,
    pad_to_multiple_of: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` of dynamically padded batches, tokenised once up front.

    Each batch is a dict of tensors: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
    tokenizer gives them), ``labels`` (long for classification, float for regression; absent when
    ``ds.labels`` is None) and ``index`` (each row's position in ``ds``, so the original order can
    be restored). ``shuffle`` draws a fresh order each epoch from a generator seeded with ``seed``.
    ``sort_by_length`` (inference only, not with ``shuffle``) batches rows longest first to
    minimise padding. Rows longer than ``max_length`` are truncated with one warning per call.
    """
    if batch_size < 1:
        raise DataError(f"batch_size {batch_size!r}: expected a positive integer")
    if shuffle and sort_by_length:
        raise DataError("shuffle=True with sort_by_length=True: expected at most one of them")
    collate = PadCollator(tokenizer, ds.is_regression, pad_to_multiple_of)
    features = tokenize(ds, tokenizer, max_length, _stacklevel=3)
    sampler: Any = None
    generator = None
    if sort_by_length:
        lengths = [len(f["input_ids"]) for f in features]
        sampler = sorted(range(len(features)), key=lambda i: -lengths[i])
    elif shuffle:
        generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        _EncodedRows(features, ds.labels),
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        collate_fn=collate,
        num_workers=num_workers,
    )
