"""Early-exit inference: offline simulation over cached logits, and the live runtime that really stops.

* :func:`simulate` replays a policy over every exit's cached logits [K, N, C] for a whole grid of
  thresholds at once (sweeps, calibration, COSEE's training-time exit simulation).
* :class:`EarlyExitEngine` runs a model layer by layer through its backbone adapter, evaluates exit
  heads only at exit layers and only for the rows still running, and drops the rows that left
  (compaction) before the next layer; at batch size 1 it simply stops. It also runs multi-model
  cascades (``CascadeModel``: ``members`` each with one exit; later members start again from the
  embeddings for the rows left).

Both call the same ``policy.step`` (see :mod:`offramp.policies`), so a simulated sweep and live
inference take identical exits and predictions (``tests/test_engine.py`` holds them to it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .cascade import load_any
from .policies import (
    ExitOutput,
    Policy,
    PolicyError,
    PolicyState,
    describe_policies,
    get_policy,
    policy_from_config,
)

Tensor = torch.Tensor

#: Families whose layers mix positions only through masked attention (absolute positions are added
#: once in the embeddings; relative positions depend on i - j only), so dropping trailing all-padding
#: columns after compaction leaves every real token's output unchanged.
TRIM_SAFE_MODEL_TYPES = frozenset(
    {"bert", "roberta", "electra", "xlm-roberta", "camembert", "albert", "distilbert", "mpnet", "deberta-v2"}
)


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
    model: Any, policy: Policy | str | dict[str, Any] | None = None, threshold: Any = None
) -> Policy:
    """The policy a call runs: the one given (name, config dict or object), else ``model.config.policy``,
    else the final exit; ``threshold`` replaces the value on the policy's threshold axis."""
    if policy is None:
        saved = getattr(model.config, "policy", None)
        resolved = policy_from_config(saved) if saved else _final_exit_policy(len(model.exits))
    elif isinstance(policy, str):
        resolved = get_policy(policy)
    else:
        resolved = _resolve(policy)
    if threshold is not None:
        resolved = resolved.with_threshold(threshold)
    return resolved


class EarlyExitEngine:
    """Live early-exit inference for a :class:`~offramp.model.MultiExitModel` or a cascade.

    ``engine.predict(texts, policy=..., threshold=...)`` tokenises, sorts by length, batches, and runs
    each batch layer by layer: heads only at exit layers, only for rows still running, exited rows
    removed before the next layer (with trailing all-padding columns trimmed when that is exactly
    equivalent, see ``TRIM_SAFE_MODEL_TYPES``). The policy and threshold may change on every call.
    """

    def __init__(self, model: Any, device: str | torch.device | None = None, max_length: int | None = None):
        self.model = model
        self.is_cascade = hasattr(model, "members")
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
        self.label_names = getattr(first.config, "label_names", None)
        self.num_labels = first.config.num_labels
        self._learned = all(getattr(m.config, "learned_exit", False) for m in self.members)
        if self.is_cascade:
            bad = [i for i, m in enumerate(self.members) if m.num_exits != 1]
            if bad:
                raise ValueError(f"cascade members {bad} have several exits; expected one exit per member")
            self._exit_slot = {}
        else:
            self._exit_slot = {layer: k for k, layer in enumerate(self.exits)}
        self._trim = [m.adapter.config.model_type in TRIM_SAFE_MODEL_TYPES for m in self.members]
        self._pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0

    # -- inputs --------------------------------------------------------------------------------------
    def encode(self, inputs: Any) -> list[dict[str, list[int]]]:
        """Tokenise texts (strings, (a, b) pairs, a TextDataset) or unpad a tokenised batch dict."""
        if isinstance(inputs, dict):
            return _unpad(inputs)
        texts = getattr(inputs, "texts", inputs)
        if isinstance(texts, str):
            texts = [texts]
        rows = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
        if not rows:
            return []
        widths = {len(r) for r in rows}
        if len(widths) != 1 or not widths <= {1, 2}:
            raise ValueError(
                f"inputs hold {sorted(widths)} texts per row; expected 1 (single) or 2 (pair) in every row"
            )
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass a tokenised batch dict instead of texts")
        first = [r[0] for r in rows]
        second = [r[1] for r in rows] if widths == {2} else None
        enc = self.tokenizer(first, second, truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(rows))]

    def prepare(self, inputs: Any, batch_size: int = 32, sort_by_length: bool = True) -> PreparedInputs:
        """Tokenise and cut into padded tensors once, so repeated runs (benchmarks) skip that work."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: expected a positive integer")
        features = self.encode(inputs)
        lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(features))
        has_types = bool(features) and "token_type_ids" in features[0]
        batches = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            types = np.zeros((len(rows), width), dtype=np.int64) if has_types else None
            for j, r in enumerate(rows.tolist()):  # data preparation, outside the timed runtime
                n = lengths[r]
                ids[j, :n] = features[r]["input_ids"]
                mask[j, :n] = 1
                if types is not None:
                    types[j, :n] = features[r]["token_type_ids"]
            batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if types is not None:
                batch["token_type_ids"] = torch.from_numpy(types)
            batch["rows"] = torch.from_numpy(rows.astype(np.int64))
            batches.append(batch)
        return PreparedInputs(batches, len(features), batch_size)

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
        for batch in prepared.batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if self.is_cascade:
                self._run_cascade(batch, pol, template, out)
            else:
                self._run_multi_exit(batch, pol, template, out)
        exit_index = out.slot.numpy()
        return EarlyExitResult(
            predictions=out.prediction.numpy(),
            probabilities=None if out.probs is None else out.probs.numpy(),
            exit_index=exit_index,
            exit_layer=np.asarray(self.exits, dtype=np.int64)[exit_index] if n else np.zeros(0, np.int64),
            layers_run=out.layers.numpy(),
            label_names=self.label_names,
            policy=pol.to_config(),
        )

    def _run_multi_exit(
        self, batch: dict[str, Tensor], policy: Policy, template: PolicyState, out: _Outputs
    ) -> None:
        model = self.members[0]
        adapter, heads, exit_slot = model.adapter, model.heads, self._exit_slot
        mask = batch["attention_mask"]
        rows = batch["rows"]
        state = template.fresh(int(rows.numel()))
        hidden = adapter.embed(batch["input_ids"], mask, batch.get("token_type_ids"))
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
            hidden, mask = hidden.index_select(0, keep), mask.index_select(0, keep)
            if self._trim[0]:
                hidden, mask = _trim_padding(hidden, mask)
            context = adapter.layer_context(hidden, mask)

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
            adapter, mask = member.adapter, inputs["attention_mask"]
            hidden = adapter.embed(inputs["input_ids"], mask, inputs.get("token_type_ids"))
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
    """Preallocated result tensors filled by index as rows leave."""

    def __init__(self, n: int, num_classes: int, regression: bool):
        self.prediction = torch.zeros(n, dtype=torch.float32 if regression else torch.long)
        self.probs = None if regression else torch.zeros(n, num_classes, dtype=torch.float32)
        self.slot = torch.zeros(n, dtype=torch.long)
        self.layers = torch.zeros(n, dtype=torch.long)

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
        rows = rows.cpu()
        self.prediction[rows] = prediction.cpu().to(self.prediction.dtype)
        if self.probs is not None and probs is not None:
            probs = probs[0] if subset is None else probs[0].index_select(0, subset)
            self.probs[rows] = probs.cpu()
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


# ---------------------------------------------------------------------------------------------------------
# Command line: offramp predict
# ---------------------------------------------------------------------------------------------------------

POLICY_HELP = (
    "exit policies (--policy NAME; [axis] is what --threshold sets):\n"
    + describe_policies()
    + "\n\nWithout --policy the model's calibrated policy (`offramp calibrate`) is used, else the final exit."
)


def parse_threshold(text: str | None) -> float | list[float] | None:
    """``"0.9"`` -> 0.9; ``"0.5,0.6,0.7"`` -> one value per exit."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--threshold {text!r}: expected a number, or comma-separated numbers (one per exit)"
        ) from None
    if not values:
        raise ValueError(f"--threshold {text!r}: expected a number")
    return values[0] if len(values) == 1 else values


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["t=3", "signal=entropy", "ensemble=true"]`` -> typed values (JSON where it parses, else text)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE, e.g. t=3 or signal=entropy")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params[key.strip()] = value
    return params


def policy_from_args(policy: str | None, threshold: str | None, params: Sequence[str]) -> Policy | None:
    """The policy asked for on the command line, or None for the model's own."""
    extra = parse_params(params)
    if policy is None:
        if extra:
            raise ValueError("--param needs --policy NAME (the parameters belong to a policy)")
        return None
    pol = get_policy(policy, **extra)
    value = parse_threshold(threshold)
    return pol.with_threshold(value) if value is not None else pol


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("exit policy")
    g.add_argument(
        "--policy", metavar="NAME", help="exit policy by name (list below); default: the model's own"
    )
    g.add_argument(
        "--threshold",
        metavar="X",
        help="value on the policy's threshold axis (tau, t, alpha or k); comma-separated for one per exit",
    )
    g.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another policy parameter, e.g. t=3, signal=entropy, ensemble=true, weights=[0.7,0.8,0.9]",
    )


def add_predict_parser(sub: Any) -> argparse.ArgumentParser:
    """``offramp predict MODEL_DIR [FILE]``: JSONL with label, probabilities and exit layer per input."""
    from .cli import HEAVY_COMMANDS

    p = sub.add_parser(
        "predict",
        help=HEAVY_COMMANDS["predict"][2],
        description="Label texts with early exit. Input: a file with one text per line (or stdin); for pair "
        "tasks (MRPC, RTE, ...) each line is 'sentence1<TAB>sentence2'. Output: one JSON object per "
        "line: label, label_id, probabilities, exit_layer, layers_run (regression: prediction).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=POLICY_HELP + "\n\nexamples:\n  offramp predict runs/sst2 reviews.txt\n"
        "  echo 'a gripping film' | offramp predict runs/sst2 --policy entropy --threshold 0.3",
    )
    p.add_argument("model_dir", help="a folder written by `offramp train` (or a cascade folder)")
    p.add_argument(
        "input", nargs="?", default="-", help="text file, one input per line ('-' or omitted: stdin)"
    )
    p.add_argument("--output", "-o", help="write JSONL here instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per batch (default: 32)")
    add_policy_args(p)
    p.set_defaults(func=run_predict)
    return p


def read_inputs(path: str, pair: bool | None) -> tuple[list[Any], list[int]]:
    """Non-blank lines of ``path`` (``-`` = stdin) and their 1-based line numbers; pairs split at TAB."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"input file {path!r} not found; expected a text file, one input per line"
            ) from None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise ValueError(f"no inputs in {'stdin' if path == '-' else repr(path)}: expected one text per line")
    if pair is None:
        pair = all("\t" in line for _, line in numbered)
    texts: list[Any] = []
    for number, line in numbered:
        if pair:
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(
                    f"line {number} has {len(parts)} tab-separated fields; this pair task expects "
                    "'sentence1<TAB>sentence2'"
                )
            texts.append((parts[0], parts[1]))
        else:
            texts.append(line)
    return texts, [n for n, _ in numbered]


def run_predict(args: argparse.Namespace) -> int:
    """Implementation of ``offramp predict``."""
    model = load_any(args.model_dir)
    policy = policy_from_args(args.policy, args.threshold, args.param)
    if policy is None and args.threshold is not None:
        policy = resolve_policy(model, None, parse_threshold(args.threshold))
    pair = None
    task = getattr(model.config, "task", None)
    if task:
        from .data import get_task_spec

        pair = len(get_task_spec(task).text_columns) == 2
    texts, numbers = read_inputs(args.input, pair)
    engine = EarlyExitEngine(model)
    result = engine.predict(texts, policy=policy, batch_size=args.batch_size)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for number, record in zip(numbers, result.records(), strict=True):
            out.write(json.dumps({"line": number, **record}) + "\n")
    finally:
        if args.output:
            out.close()
    return 0
