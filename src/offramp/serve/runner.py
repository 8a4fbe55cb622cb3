"""The model side of the server: one call runs a batch of texts under one policy, off the event loop.

Most rows go through :class:`~offramp.engine.EarlyExitEngine` (layer by layer, exited rows compacted
away). *Shadow* rows (a sampled share, for label-free control) instead run every exit in one full
forward pass; their answer is the policy replayed over those exits by :func:`offramp.simulate.simulate`,
the same ``policy.step`` code the engine runs, so a shadow row gets the answer it would have got live
and only its cost differs (the full model, which is what ``layers_run`` reports for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..engine import EarlyExitEngine, EarlyExitResult
from ..model import ExitModel
from ..policies import Policy, PolicyError
from ..simulate import simulate


@dataclass
class ShadowOutputs:
    """Every exit's outputs for the shadow rows of a batch: ``logits`` [K, S, C], ``confidence`` [K, S]."""

    logits: np.ndarray
    confidence: np.ndarray | None


@dataclass
class BatchOutput:
    """Results of one batch, in input order, plus the shadow rows' exit outputs for the control window.

    ``result.layers_run`` is what each row really cost (the full model for shadow rows); ``exit_cost``
    is what it would have cost live (its exit's cost), which the policy's speed-up is measured by.
    """

    result: EarlyExitResult
    exit_cost: np.ndarray
    shadow: np.ndarray
    shadow_outputs: ShadowOutputs | None


class ModelRunner:
    """Wraps a loaded model (multi-exit or cascade) for serving: validation, batches, shadow rows."""

    def __init__(self, model: ExitModel, batch_size: int = 64):
        self.model = model
        self.engine = EarlyExitEngine(model)
        self.batch_size = batch_size
        self.is_cascade = self.engine.is_cascade
        self.costs = model.exit_costs
        self.full_cost = int(self.costs.costs[-1])
        self.label_names = self.engine.label_names
        self.num_labels = int(self.engine.num_labels)
        self.regression = self.engine.regression
        self.learned = bool(self.engine._learned)

    @property
    def num_exits(self) -> int:
        return self.engine.num_exits

    @property
    def exits(self) -> list[int]:
        return list(self.engine.exits)

    def check_policy(self, policy: Policy) -> Policy:
        """Raise :class:`PolicyError` now (a 400 for the client) if this model cannot run ``policy``."""
        if policy.needs_confidence and not self.learned:
            raise PolicyError(
                f"policy {policy.kind!r} uses the learned signal, but this model has no learned-exit heads"
            )
        policy.init_state(0, self.num_exits, None, self.regression)
        return policy

    def run(self, texts: list[Any], policy: Policy, shadow: np.ndarray | None = None) -> BatchOutput:
        """Answer ``texts`` under ``policy``; rows where ``shadow`` is True run every exit."""
        n = len(texts)
        shadow = np.zeros(n, dtype=bool) if shadow is None else np.asarray(shadow, dtype=bool)
        live_rows = np.flatnonzero(~shadow)
        shadow_rows = np.flatnonzero(shadow)
        parts: list[tuple[np.ndarray, EarlyExitResult]] = []
        if live_rows.size:
            live = self.engine.predict(
                [texts[i] for i in live_rows], policy=policy, batch_size=self.batch_size
            )
            parts.append((live_rows, live))
        outputs = None
        if shadow_rows.size:
            outputs = self.all_exits([texts[i] for i in shadow_rows])
            parts.append((shadow_rows, self._replay(policy, outputs)))
        result = _merge(parts, n, self.num_labels, self.regression, self.label_names, policy)
        exit_cost = np.asarray(self.costs.costs, dtype=np.int64)[result.exit_index]
        return BatchOutput(result, exit_cost, shadow, outputs)

    @torch.inference_mode()
    def all_exits(self, texts: list[Any]) -> ShadowOutputs:
        """Every exit's logits (and learned confidences) for ``texts``: one full forward per batch."""
        prepared = self.engine.prepare(texts, self.batch_size)
        k, n = self.num_exits, prepared.num_rows
        logits = np.zeros((k, n, self.num_labels), dtype=np.float32)
        confidence = np.zeros((k, n), dtype=np.float32) if self.learned else None
        device = self.engine.device
        for batch in prepared.batches:
            rows = batch["rows"].numpy()
            out = self.model(
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["token_type_ids"].to(device) if "token_type_ids" in batch else None,
            )
            logits[:, rows] = out.logits.float().cpu().numpy()
            if confidence is not None and out.confidence is not None:
                confidence[:, rows] = out.confidence.float().cpu().numpy()
        return ShadowOutputs(logits, confidence)

    def _replay(self, policy: Policy, outputs: ShadowOutputs) -> EarlyExitResult:
        """The policy's live answer for rows whose every exit ran (simulate runs the same step code)."""
        sim = simulate(
            policy,
            outputs.logits,
            None,
            outputs.confidence,
            return_probs=not self.regression,
            regression=self.regression,
        )
        slot = np.asarray(sim.exit_slot[0], dtype=np.int64)
        n = slot.shape[0]
        return EarlyExitResult(
            predictions=np.asarray(sim.prediction[0]),
            probabilities=None if sim.probs is None else np.asarray(sim.probs[0], dtype=np.float32),
            exit_index=slot,
            exit_layer=np.asarray(self.exits, dtype=np.int64)[slot],
            layers_run=np.full(n, self.full_cost, dtype=np.int64),
            label_names=self.label_names,
        )


def _merge(
    parts: list[tuple[np.ndarray, EarlyExitResult]],
    n: int,
    num_labels: int,
    regression: bool,
    label_names: list[str] | None,
    policy: Policy,
) -> EarlyExitResult:
    """Scatter the live and shadow results back into one result in input order."""
    predictions = np.zeros(n, dtype=np.float32 if regression else np.int64)
    probabilities = None if regression else np.zeros((n, num_labels), dtype=np.float32)
    exit_index = np.zeros(n, dtype=np.int64)
    exit_layer = np.zeros(n, dtype=np.int64)
    layers_run = np.zeros(n, dtype=np.int64)
    for rows, part in parts:
        predictions[rows] = part.predictions
        if probabilities is not None and part.probabilities is not None:
            probabilities[rows] = part.probabilities
        exit_index[rows] = part.exit_index
        exit_layer[rows] = part.exit_layer
        layers_run[rows] = part.layers_run
    return EarlyExitResult(
        predictions, probabilities, exit_index, exit_layer, layers_run, label_names, policy.to_config()
    )
