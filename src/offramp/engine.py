"""The live early-exit runtime: inputs really stop computing when they leave.

* :class:`EarlyExitEngine` runs a model layer by layer through its backbone adapter, evaluates exit
  heads only at exit layers and only for the rows still running, and drops the rows that left
  (compaction) before the next layer; at batch size 1 it simply stops. It also runs multi-model
  cascades (``CascadeModel``: ``members`` each with one exit; later members start again from the
  embeddings for the rows left).

It calls the same ``policy.step`` as :func:`offramp.simulate.simulate` (see :mod:`offramp.policies`), so
a simulated sweep and live inference take identical exits and predictions (``tests/test_engine.py``
holds them to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .cascade import CascadeModel
from .data import display_names
from .data.batching import encode_texts, pad_features
from .model import ExitModel, embed_inputs, is_image_adapter
from .policies import ExitOutput, Policy, PolicyError, PolicyState, get_policy, policy_from_config

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------------------
# Live runtime
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EarlyExitResult:
    """Live inference results, in input order.

    ``predictions`` [N] class ids (float values for regression); ``probabilities`` [N, C] (None for
    regression); ``exit_index`` [N] 0-based exit; ``exit_layer`` [N] the layer of that exit (for a
    cascade, the depth of the member that answered); ``layers_run`` [N] layers actually computed for the
    input (a cascade counts every member it ran).
    """

    predictions: np.ndarray
    probabilities: np.ndarray | None
    exit_index: np.ndarray
    exit_layer: np.ndarray
    layers_run: np.ndarray
    label_names: list[str] | None = None
    policy: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.predictions)

    @property
    def labels(self) -> list[Any]:
        """Label names (class ids when the model has none; values for regression)."""
        if self.probabilities is None or self.label_names is None:
            return self.predictions.tolist()
        return [self.label_names[i] for i in self.predictions.tolist()]

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per input: label, probabilities, exit layer."""
        rows = []
        for i in range(len(self)):
            row: dict[str, Any]
            if self.probabilities is None:
                row = {"prediction": float(self.predictions[i])}
            else:
                names = self.label_names or [str(c) for c in range(self.probabilities.shape[1])]
                label_id = int(self.predictions[i])
                row = {
                    "label": names[label_id],
                    "label_id": label_id,
                    "probabilities": {
                        n: round(float(p), 6) for n, p in zip(names, self.probabilities[i], strict=True)
                    },
                }
            row["exit_layer"] = int(self.exit_layer[i])
            row["layers_run"] = int(self.layers_run[i])
            rows.append(row)
        return rows


@dataclass
class PreparedInputs:
    """Tokenised inputs cut into padded batches (longest first); ``rows`` maps batch rows to inputs."""

    batches: list[dict[str, Tensor]]
    num_rows: int
    batch_size: int


def _final_exit_policy(num_exits: int) -> Policy:
    return get_policy("budget", k=num_exits)


def resolve_policy(
    model: ExitModel, policy: Policy | str | dict[str, Any] | None = None, threshold: Any = None
) -> Policy:
    """The policy a call runs: the one given (name, config dict or object), else ``model.config.policy``,
    else the final exit; ``threshold`` replaces the value on the policy's threshold axis."""
    if policy is None:
        saved = getattr(model.config, "policy", None)
        resolved = policy_from_config(saved) if saved else _final_exit_policy(len(model.exits))
    elif isinstance(policy, str):
        resolved = get_policy(policy)
    elif isinstance(policy, Policy):
        resolved = policy
    else:
        resolved = policy_from_config(policy)
    if threshold is not None:
        resolved = resolved.with_threshold(threshold)
    return resolved


class EarlyExitEngine:
    """Live early-exit inference for a :class:`~offramp.model.MultiExitModel` or a cascade.

    ``engine.predict(texts, policy=..., threshold=...)`` tokenises, sorts by length, batches, and runs
    each batch layer by layer: heads only at exit layers, only for rows still running, exited rows
    removed before the next layer (with trailing all-padding columns trimmed when that is exactly
    equivalent, see ``BackboneAdapter.trim_safe``). The policy and threshold may change on every call.
    """

    def __init__(
        self, model: ExitModel, device: str | torch.device | None = None, max_length: int | None = None
    ):
        self.model = model
        self.is_cascade = isinstance(model, CascadeModel)
        self.members = list(model.members) if self.is_cascade else [model]
        if device is not None:
            for member in self.members:
                member.to(device)
        self.device = next(self.members[0].parameters()).device
        for member in self.members:
            member.eval()
        self.tokenizer = getattr(model, "tokenizer", None) or self.members[0].tokenizer
        self.exits = list(model.exits)
        self.num_exits = len(self.exits)
        first = self.members[0]
        self.regression = bool(getattr(first, "is_regression", False))
        self.max_length = max_length or getattr(model.config, "max_length", None) or first.config.max_length
        self.label_names = display_names(first.config.task, first.config.label_names)
        self.num_labels = first.config.num_labels
        self._learned = all(getattr(m.config, "learned_exit", False) for m in self.members)
        if self.is_cascade:
            bad = [i for i, m in enumerate(self.members) if m.num_exits != 1]
            if bad:
                raise ValueError(f"cascade members {bad} have several exits; expected one exit per member")
            self._exit_slot = {}
        else:
            self._exit_slot = {layer: k for k, layer in enumerate(self.exits)}
        self.is_image = is_image_adapter(first.adapter)
        self._trim = [m.adapter.trim_safe and not self.is_image for m in self.members]
        self._pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0

    # -- inputs --------------------------------------------------------------------------------------
    def encode(self, inputs: Any) -> list[dict[str, list[int]]]:
        """Tokenise texts (strings, (a, b) pairs, a TextDataset) or unpad a tokenised batch dict."""
        if isinstance(inputs, dict):
            return _unpad(inputs)
        texts = getattr(inputs, "texts", inputs)
        rows = [texts] if isinstance(texts, str) else list(texts)
        if not rows:
            return []
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass a tokenised batch dict instead of texts")
        source = getattr(inputs, "source", None)
        features = encode_texts(self.tokenizer, rows, self.max_length, source=source, stacklevel=3)
        keys = [k for k in ("input_ids", "token_type_ids") if k in features[0]]
        return [{k: f[k] for k in keys} for f in features]

    def prepare(self, inputs: Any, batch_size: int = 32, sort_by_length: bool = True) -> PreparedInputs:
        """Tokenise and cut into padded tensors once, so repeated runs (benchmarks) skip that work.

        Image models take an ``ImageDataset`` (normalised with the model's stored statistics) or a float
        tensor [N, C, H, W] (already normalised), cut into batches in input order.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: expected a positive integer")
        if self.is_image:
            return self._prepare_images(inputs, batch_size)
        features = self.encode(inputs)
        lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(features))
        batches = []
        for start in range(0, len(order), batch_size):  # data preparation, outside the timed runtime
            rows = order[start : start + batch_size]
            batch = pad_features([features[r] for r in rows.tolist()], self._pad_id)  # right-padded
            batch["rows"] = torch.from_numpy(rows.astype(np.int64))
            batches.append(batch)
        return PreparedInputs(batches, len(features), batch_size)

    def _prepare_images(self, inputs: Any, batch_size: int) -> PreparedInputs:
        """``{"pixel_values": [B, C, H, W], "rows": [B]}`` batches in input order (no sorting, no padding)."""
        pixels = self.members[0].pixel_values(inputs)
        rows = torch.arange(pixels.shape[0], dtype=torch.int64)
        batches = [
            {"pixel_values": pixels[start : start + batch_size], "rows": rows[start : start + batch_size]}
            for start in range(0, pixels.shape[0], batch_size)
        ]
        return PreparedInputs(batches, int(pixels.shape[0]), batch_size)

    # -- running -------------------------------------------------------------------------------------
    def predict(
        self,
        inputs: Any,
        policy: Policy | str | dict[str, Any] | None = None,
        threshold: Any = None,
        batch_size: int = 32,
    ) -> EarlyExitResult:
        """Predict with early exit. ``inputs``: texts, (a, b) pairs, a TextDataset, or a tokenised batch.

        ``policy``: a Policy, a registry name, a config dict, or None for ``model.config.policy`` (else
        the final exit). ``threshold`` overrides the policy's threshold-axis value for this call.
        """
        return self.run(self.prepare(inputs, batch_size), policy, threshold)

    @torch.inference_mode()
    def run(
        self,
        prepared: PreparedInputs,
        policy: Policy | str | dict[str, Any] | None = None,
        threshold: Any = None,
    ) -> EarlyExitResult:
        """Run prepared batches; results come back in input order."""
        pol = resolve_policy(self.model, policy, threshold)
        if pol.needs_confidence and not self._learned:
            raise PolicyError(
                f"policy {pol.kind!r} uses the learned signal, but this model has no learned-exit heads "
                "(train with learned_exit=True)"
            )
        # Validated once, before any compute; every batch starts from a fresh copy.
        template = pol.init_state(0, self.num_exits, None, self.regression, device=self.device)
        n = prepared.num_rows
        out = _Outputs(n, 1 if self.regression else self.num_labels, self.regression)
        fuse = None if self.is_cascade else getattr(self.model, "fused_runner", None)
        fused = fuse(pol, template.thresholds[0]) if fuse is not None else None  # one graph per batch
        on_cpu = self.device.type == "cpu"
        for batch in prepared.batches:
            batch = batch if on_cpu else {k: v.to(self.device) for k, v in batch.items()}
            if fused is not None:
                self._record_fused(batch["rows"], *fused(batch), out)
            elif self.is_cascade:
                self._run_cascade(batch, pol, template, out)
            else:
                self._run_multi_exit(batch, pol, template, out)
        exit_index = out.slot
        return EarlyExitResult(
            predictions=out.prediction,
            probabilities=out.probs,
            exit_index=exit_index,
            exit_layer=np.asarray(self.exits, dtype=np.int64)[exit_index] if n else np.zeros(0, np.int64),
            layers_run=out.layers,
            label_names=self.label_names,
            policy=pol.to_config(),
        )

    def _run_multi_exit(
        self, batch: dict[str, Tensor], policy: Policy, template: PolicyState, out: _Outputs
    ) -> None:
        model = self.members[0]
        adapter, heads, exit_slot = model.adapter, model.heads, self._exit_slot
        rows = batch["rows"]
        state = template.fresh(int(rows.numel()))
        hidden, mask = embed_inputs(adapter, batch)  # mask: None for images
        context = adapter.layer_context(hidden, mask)
        for i in range(model.depth):
            hidden = adapter.run_layer(i, hidden, context)
            slot = exit_slot.get(i + 1)
            if slot is None or not policy.needs_output(state, slot):
                continue
            logits, confidence = heads[slot](hidden, mask)
            state, exit_now, prediction = policy.step(state, slot, ExitOutput(logits, confidence))
            leave = exit_now[0]
            if bool(leave.all()):
                out.record(rows, prediction[0], state.values.get("probs"), slot, self.exits[slot])
                return
            if not bool(leave.any()):
                continue
            gone = leave.nonzero().squeeze(1)
            out.record(
                rows[gone], prediction[0, gone], state.values.get("probs"), slot, self.exits[slot], gone
            )
            keep = (~leave).nonzero().squeeze(1)
            rows, state = rows[keep], state.select(keep)
            hidden = hidden.index_select(0, keep)  # [B, T, D] or [B, C, H, W]
            if mask is not None:
                mask = mask.index_select(0, keep)
                if self._trim[0]:
                    hidden, mask = _trim_padding(hidden, mask)
            context = adapter.layer_context(hidden, mask)

    def _record_fused(self, rows: Tensor, logits: Tensor, slots: np.ndarray, out: _Outputs) -> None:
        """Store a fused run's rows: probabilities and predictions from each row's exit logits, as
        ``policy.step`` computes them (so both paths label an input the same way)."""
        output = ExitOutput(logits)
        rows_np, probs, prediction = rows.numpy(), output.probs.numpy(), output.prediction.numpy()
        if (slots == slots[0]).all():  # the whole batch left at one exit (always so at batch 1)
            out.store(rows_np, prediction, probs, int(slots[0]), self.exits[int(slots[0])])
            return
        for slot in np.unique(slots).tolist():
            mine = slots == slot
            out.store(rows_np[mine], prediction[mine], probs[mine], slot, self.exits[slot])

    def _run_cascade(
        self, batch: dict[str, Tensor], policy: Policy, template: PolicyState, out: _Outputs
    ) -> None:
        rows = batch["rows"]
        inputs = {k: v for k, v in batch.items() if k != "rows"}
        state = template.fresh(int(rows.numel()))
        spent = 0
        for k, member in enumerate(self.members):
            if not policy.needs_output(state, k):
                continue
            if self._trim[k]:
                inputs = _trim_inputs(inputs)
            adapter = member.adapter
            hidden, mask = embed_inputs(adapter, inputs)
            context = adapter.layer_context(hidden, mask)
            for i in range(member.depth):
                hidden = adapter.run_layer(i, hidden, context)
            spent += member.depth
            logits, confidence = member.heads[-1](hidden, mask)
            state, exit_now, prediction = policy.step(state, k, ExitOutput(logits, confidence))
            leave = exit_now[0]
            if bool(leave.all()):
                out.record(rows, prediction[0], state.values.get("probs"), k, spent)
                return
            if not bool(leave.any()):
                continue
            gone = leave.nonzero().squeeze(1)
            out.record(rows[gone], prediction[0, gone], state.values.get("probs"), k, spent, gone)
            keep = (~leave).nonzero().squeeze(1)
            rows, state = rows[keep], state.select(keep)
            inputs = {name: value.index_select(0, keep) for name, value in inputs.items()}


class _Outputs:
    """Preallocated result arrays (numpy: cheaper to fill by index than tensors) filled as rows leave."""

    def __init__(self, n: int, num_classes: int, regression: bool):
        self.prediction = np.zeros(n, dtype=np.float32 if regression else np.int64)
        self.probs = None if regression else np.zeros((n, num_classes), dtype=np.float32)
        self.slot = np.zeros(n, dtype=np.int64)
        self.layers = np.zeros(n, dtype=np.int64)

    def record(
        self,
        rows: Tensor,
        prediction: Tensor,
        probs: Tensor | None,
        slot: int,
        layers: int,
        subset: Tensor | None = None,
    ) -> None:
        """Store the rows that left; ``probs`` [1, n, C] covers all running rows, ``subset`` picks ours."""
        if probs is not None:
            probs = (probs[0] if subset is None else probs[0].index_select(0, subset)).cpu().numpy()
        self.store(rows.cpu().numpy(), prediction.cpu().numpy(), probs, slot, layers)

    def store(
        self, rows: np.ndarray, prediction: np.ndarray, probs: np.ndarray | None, slot: int, layers: int
    ) -> None:
        """:meth:`record` on numpy arrays (``probs`` [n, C] for exactly these rows)."""
        self.prediction[rows] = prediction
        if self.probs is not None and probs is not None:
            self.probs[rows] = probs
        self.slot[rows] = slot
        self.layers[rows] = layers


def _trim_padding(hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop trailing columns that are padding in every remaining row."""
    used = mask.any(0).nonzero()
    width = int(used[-1]) + 1 if used.numel() else 1
    if width < mask.shape[1]:
        return hidden[:, :width], mask[:, :width]
    return hidden, mask


def _trim_inputs(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    mask = inputs["attention_mask"]
    used = mask.any(0).nonzero()
    width = int(used[-1]) + 1 if used.numel() else 1
    if width < mask.shape[1]:
        return {k: v[:, :width] for k, v in inputs.items()}
    return inputs


def _unpad(batch: dict[str, Any]) -> list[dict[str, list[int]]]:
    """Per-row token lists from a padded batch (either padding side), using its attention mask."""
    if "input_ids" not in batch or "attention_mask" not in batch:
        raise ValueError(
            f"a tokenised batch needs 'input_ids' and 'attention_mask'; got keys {sorted(batch)}"
        )
    ids = torch.as_tensor(batch["input_ids"])
    mask = torch.as_tensor(batch["attention_mask"]).bool()
    types = batch.get("token_type_ids")
    rows = []
    for i in range(ids.shape[0]):
        row = {"input_ids": ids[i][mask[i]].tolist()}
        if types is not None:
            row["token_type_ids"] = torch.as_tensor(types)[i][mask[i]].tolist()
        rows.append(row)
    return rows
