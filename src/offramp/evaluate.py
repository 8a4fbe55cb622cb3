"""Evaluation over a split: run the model once, keep every exit's outputs, score each exit."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import TextDataset, make_loader
from .io import replace_file_atomic
from .losses import per_exit_task_loss
from .metrics import ExitCosts, exit_predictions, primary_metric, task_metrics
from .model import ExitModel, MultiExitModel
from .progress import progress_bar

#: Files whose content defines what a model folder computes (a change invalidates cached outputs).
CONFIG_FILES = ("offramp.json", "cascade.json", "backbone_config.json", "onnx_export.json")


@dataclass
class ExitOutputs:
    """Every exit's outputs on a split, in dataset order.

    ``logits``: [K, N, C] float32; ``confidence``: [K, N] learned-exit logits or None;
    ``labels``: [N] or None for unlabelled data; ``exits``: the exit layers; ``exit_costs``: the layers an
    input leaving at each exit cost (None: the exit layers, a multi-exit model; a cascade sums its members'
    depths); ``fingerprint``: what the outputs were computed from (see :func:`outputs_fingerprint`), so a
    cache can tell it is stale.
    """

    logits: np.ndarray
    labels: np.ndarray | None
    exits: list[int]
    confidence: np.ndarray | None = None
    fingerprint: str | None = None
    exit_costs: list[int] | None = None

    @property
    def costs(self) -> ExitCosts:
        """The cost model of the exits (see :class:`~offramp.metrics.ExitCosts`)."""
        if self.exit_costs is None:
            return ExitCosts.of_exits(self.exits)
        return ExitCosts(tuple(int(c) for c in self.exit_costs), int(self.exits[-1]))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a compressed ``.npz`` (no pickled objects), atomically."""
        arrays = {"logits": self.logits, "exits": np.asarray(self.exits)}
        if self.exit_costs is not None:
            arrays["exit_costs"] = np.asarray(self.exit_costs)
        if self.fingerprint is not None:
            arrays["fingerprint"] = np.asarray(self.fingerprint)
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.confidence is not None:
            arrays["confidence"] = self.confidence

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        replace_file_atomic(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExitOutputs:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                logits=data["logits"],
                labels=data["labels"] if "labels" in data else None,
                exits=[int(v) for v in data["exits"]],
                confidence=data["confidence"] if "confidence" in data else None,
                fingerprint=str(data["fingerprint"]) if "fingerprint" in data else None,
                exit_costs=[int(v) for v in data["exit_costs"]] if "exit_costs" in data else None,
            )


def outputs_fingerprint(model_dir: str | os.PathLike[str], data: TextDataset, max_length: int) -> str:
    """SHA-256 of the inputs, labels, truncation length, the model's config files and the saved weights.

    Two evaluations with the same fingerprint ran the same weights over the same rows, so cached exit
    outputs can be reused; anything else (another file with as many rows, retrained weights, a new
    ``max_length``, edited exits or heads in ``offramp.json``) changes it. Weights (safetensors, ONNX graphs)
    count by size and mtime.
    """
    h = hashlib.sha256()
    images = getattr(data, "images", None)
    if images is not None:  # an ImageDataset: its pixels and labels (normalisation is in offramp.json)
        labels = None if data.labels is None else np.asarray(data.labels).tolist()
        h.update(np.ascontiguousarray(images).tobytes() + json.dumps([images.shape, labels]).encode())
    else:
        h.update(json.dumps([data.texts, data.labels, max_length], default=str).encode())
    for config in sorted(Path(model_dir).rglob("*.json")):
        if config.name in CONFIG_FILES:
            h.update(f"{config.relative_to(model_dir)}:".encode() + config.read_bytes())
    weight_files = [*Path(model_dir).rglob("*.safetensors"), *Path(model_dir).rglob("*.onnx")]
    for weights in sorted(weight_files):
        st = weights.stat()
        h.update(f"{weights.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


@torch.no_grad()
def collect_exit_outputs(
    model: ExitModel,
    data: TextDataset,
    batch_size: int = 128,
    max_length: int | None = None,
    progress: bool = False,
) -> ExitOutputs:
    """Run every exit on every example (no early exit) and gather the outputs in dataset order.

    ``data``: a TextDataset, or for an image model an ``ImageDataset`` (normalised with the model's
    statistics, see ``MultiExitModel.pixel_values``).
    """
    model.eval()
    device = next(model.parameters()).device
    if getattr(model, "is_image", False):
        pixels = model.pixel_values(data)
        loader = [{"pixel_values": pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)]
    else:
        loader = make_loader(data, model.tokenizer, batch_size, max_length or model.config.max_length)
    logits, confidence = [], []
    for batch in progress_bar(loader, desc="evaluating", enabled=progress):
        inputs = {
            k: v.to(device)
            for k, v in batch.items()
            if k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
        }
        out = model(**inputs)
        logits.append(out.logits.float().cpu())
        if out.confidence is not None:
            confidence.append(out.confidence.float().cpu())
    labels = None if getattr(data, "labels", None) is None else np.asarray(data.labels)
    return ExitOutputs(
        logits=torch.cat(logits, dim=1).numpy(),
        labels=labels,
        exits=list(model.exits),
        confidence=torch.cat(confidence, dim=1).numpy() if confidence else None,
        exit_costs=list(model.exit_costs.costs),
    )


def scores_from_outputs(outputs: ExitOutputs, task: str | None, regression: bool) -> list[dict]:
    """Per-exit metrics: one dict per exit with ``exit``, ``layer``, ``metric``, ``score``, all metrics and
    the mean training loss (cross-entropy, or squared error for regression)."""
    if outputs.labels is None:
        raise ValueError("per-exit scores need labels; this split is unlabelled")
    key = primary_metric(task, regression=regression)
    labels = torch.as_tensor(np.asarray(outputs.labels), dtype=torch.float32 if regression else torch.long)
    losses = per_exit_task_loss(torch.as_tensor(np.asarray(outputs.logits)), labels, regression).mean(1)
    rows = []
    for k, layer in enumerate(outputs.exits):
        preds = exit_predictions(outputs.logits[k], regression)
        metrics = task_metrics(task, preds, outputs.labels, regression=regression)
        row = {"exit": k + 1, "layer": layer, "metric": key, "score": metrics[key], "metrics": metrics}
        rows.append({**row, "loss": float(losses[k])})
    return rows


def per_exit_scores(
    model: MultiExitModel, data: TextDataset, batch_size: int = 128, max_length: int | None = None
) -> list[dict]:
    """Score every exit of ``model`` on ``data``."""
    outputs = collect_exit_outputs(model, data, batch_size, max_length)
    return scores_from_outputs(outputs, model.config.task, model.is_regression)


#: What model selection and early stopping compare: the task's primary metric, or the (negated) loss.
SELECT_METRICS = ("score", "loss")


def selection_score(scores: list[dict], select_by: str, metric: str = "score") -> float:
    """Model-selection score (higher is better): the mean over exits (``select_by="mean"``) or the last
    exit's primary metric, or with ``metric="loss"`` minus the mean (or last) validation loss."""
    if metric not in SELECT_METRICS:
        raise ValueError(f"selection metric {metric!r}: expected one of {', '.join(SELECT_METRICS)}")
    values = [s[metric] for s in scores]
    value = float(values[-1]) if select_by == "last" else float(np.mean(values))
    return -value if metric == "loss" else value


# ---------------------------------------------------------------------------------------------------------
# The exit-output cache: one pass over a split, reused while the model folder and the rows are unchanged
# ---------------------------------------------------------------------------------------------------------


def data_name(data: TextDataset, fallback: str | None = None) -> str:
    """A short, file-name-safe name for ``data``: its task, else the file (or dataset) it came from.

    Used to name ``exit_outputs_<name>_<split>.npz`` and ``eval_<name>_<split>.json``, so two data files
    evaluated with one model get two names instead of both being called "data".
    """
    name = getattr(data, "task", None)
    if not name and data.source:
        name = Path(str(data.source).split("[")[0]).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name or fallback or "data").strip("-.")
    return name or "data"


def cache_path(
    model_dir: str | os.PathLike[str], name: str, split: str, quantization: str | None = None
) -> Path:
    """Where a split's exit outputs are cached: ``MODEL_DIR/exit_outputs_<name>_<split>[_<quant>].npz``.

    A quantized model's outputs (``quantization``, e.g. ``int8``) get their own file, so they never mix
    with the fp32 ones (the fingerprint looks at the folder's weights, which quantization leaves alone).
    """
    suffix = f"_{quantization}" if quantization else ""
    return Path(model_dir) / f"exit_outputs_{name}_{split}{suffix}.npz"


def cached_exit_outputs(
    model: ExitModel,
    model_dir: str | os.PathLike[str],
    data: TextDataset,
    cache: str | os.PathLike[str] | None,
    batch_size: int = 128,
    progress: bool = False,
    use_cache: bool = True,
    notify: Callable[[str], None] | None = None,
) -> tuple[ExitOutputs, bool]:
    """Every exit's outputs on ``data``, from ``cache`` when it was computed from the same rows and model.

    A cache whose :func:`outputs_fingerprint` differs (other rows, weights, max length or config files) is
    recomputed (``notify`` hears why, in one line); ``use_cache=False`` always recomputes. Fresh outputs are
    written to ``cache`` atomically (None: no cache file at all). Returns ``(outputs, came_from_cache)``.
    """
    path = None if cache is None else Path(cache)
    fingerprint = outputs_fingerprint(model_dir, data, model.config.max_length)
    if path is not None and use_cache and path.is_file():
        outputs = ExitOutputs.load(path)
        if outputs.fingerprint == fingerprint:
            return outputs, True
        if notify is not None:
            notify(f"{path.name} was computed from other data, weights or settings: recomputing it")
    outputs = collect_exit_outputs(model, data, batch_size, progress=progress)
    outputs.fingerprint = fingerprint
    if path is not None:
        outputs.save(path)
    return outputs, False
