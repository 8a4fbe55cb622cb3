"""Evaluation over a split: run the model once, keep every exit's outputs, score each exit."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import TextDataset, make_loader
from .metrics import primary_metric, task_metrics
from .model import MultiExitModel


@dataclass
class ExitOutputs:
    """Every exit's outputs on a split, in dataset order.

    ``logits``: [K, N, C] float32; ``confidence``: [K, N] learned-exit logits or None;
    ``labels``: [N] or None for unlabelled data; ``exits``: the exit layers; ``fingerprint``: what
    the outputs were computed from (see :func:`outputs_fingerprint`), so a cache can tell it is stale.
    """

    logits: np.ndarray
    labels: np.ndarray | None
    exits: list[int]
    confidence: np.ndarray | None = None
    fingerprint: str | None = None

    def save(self, path: str) -> None:
        arrays = {"logits": self.logits, "exits": np.asarray(self.exits)}
        if self.fingerprint is not None:
            arrays["fingerprint"] = np.asarray(self.fingerprint)
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.confidence is not None:
            arrays["confidence"] = self.confidence
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str) -> ExitOutputs:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                logits=data["logits"],
                labels=data["labels"] if "labels" in data else None,
                exits=[int(v) for v in data["exits"]],
                confidence=data["confidence"] if "confidence" in data else None,
                fingerprint=str(data["fingerprint"]) if "fingerprint" in data else None,
            )


def outputs_fingerprint(model_dir: str | os.PathLike[str], data: TextDataset, max_length: int) -> str:
    """SHA-256 of the inputs, labels, truncation length and the saved weights' size and mtime.

    Two evaluations with the same fingerprint ran the same weights over the same rows, so cached exit
    outputs can be reused; anything else (another file with as many rows, retrained weights, a new
    ``max_length``) changes it.
    """
    h = hashlib.sha256()
    h.update(json.dumps([data.texts, data.labels, max_length], default=str).encode())
    for weights in sorted(Path(model_dir).rglob("*.safetensors")):
        st = weights.stat()
        h.update(f"{weights.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


@torch.no_grad()
def collect_exit_outputs(
    model: MultiExitModel,
    data: TextDataset,
    batch_size: int = 128,
    max_length: int | None = None,
    progress: bool = False,
) -> ExitOutputs:
    """Run every exit on every example (no early exit) and gather the outputs in dataset order."""
    model.eval()
    device = next(model.parameters()).device
    loader = make_loader(data, model.tokenizer, batch_size, max_length or model.config.max_length)
    logits, confidence = [], []
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        inputs = {
            k: v.to(device)
            for k, v in batch.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        out = model(**inputs)
        logits.append(out.logits.float().cpu())
        if out.confidence is not None:
            confidence.append(out.confidence.float().cpu())
    labels = None if data.labels is None else np.asarray(data.labels)
    return ExitOutputs(
        logits=torch.cat(logits, dim=1).numpy(),
        labels=labels,
        exits=list(model.exits),
        confidence=torch.cat(confidence, dim=1).numpy() if confidence else None,
    )


def exit_predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """Predictions from logits [..., C]: argmax, or the value itself for regression."""
    return logits[..., 0] if regression else logits.argmax(-1)


def scores_from_outputs(outputs: ExitOutputs, task: str | None, regression: bool) -> list[dict]:
    """Per-exit metrics: one dict per exit with ``exit``, ``layer``, ``metric``, ``score`` and all metrics."""
    if outputs.labels is None:
        raise ValueError("per-exit scores need labels; this split is unlabelled")
    key = primary_metric(task, regression=regression)
    rows = []
    for k, layer in enumerate(outputs.exits):
        preds = exit_predictions(outputs.logits[k], regression)
        metrics = task_metrics(task, preds, outputs.labels, regression=regression)
        rows.append({"exit": k + 1, "layer": layer, "metric": key, "score": metrics[key], "metrics": metrics})
    return rows


def per_exit_scores(
    model: MultiExitModel, data: TextDataset, batch_size: int = 128, max_length: int | None = None
) -> list[dict]:
    """Score every exit of ``model`` on ``data``."""
    outputs = collect_exit_outputs(model, data, batch_size, max_length)
    return scores_from_outputs(outputs, model.config.task, model.is_regression)


def selection_score(scores: list[dict], select_by: str) -> float:
    """Model-selection score: mean of the per-exit primary metric, or the last exit's."""
    if select_by == "last":
        return float(scores[-1]["score"])
    return float(np.mean([s["score"] for s in scores]))
