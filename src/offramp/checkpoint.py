"""Resumable training checkpoints: safetensors + JSON, never pickle.

A checkpoint is a folder ``step-XXXXXXXX`` holding the model, the optimiser, the scheduler, every
process's RNG states and scheme state, the data-order position and the training log. Tensors go to
safetensors, the rest to JSON (Accelerate's ``save_state`` pickles RNG states, so it is not used).
``trainer_state.json`` is written last: a folder without it is incomplete and never resumed from.

Files: ``model.safetensors``, ``optimizer.safetensors``, ``best.safetensors`` (the best epoch's
weights so far, when there is one), ``rank-R.safetensors`` + ``rank-R.json`` (RNG and scheme state of
process R), ``trainer_state.json`` (format, position, run signature, log, best score, elapsed time,
optimiser metadata, scheduler state, train config).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from safetensors.torch import load_file, load_model, save_file, save_model

from .io import follow_umask, replace_dir
from .schemes import Scheme

CHECKPOINT_FORMAT = 1
STATE_FILE = "trainer_state.json"


@dataclass
class Position:
    """Where a run is: stage, epoch, batch within the epoch, optimiser steps (in the stage and in all),
    the running loss of the epoch, and the early-stopping count. The data order is a pure function of
    (seed, stage, epoch), so this is all it takes to continue with the same batches."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_batches: int = 0
    #: Early stopping: validations in a row without a better score, the global step of the last
    #: validation (-1: none yet in this stage), and whether patience ran out (the stage ends).
    evals_since_best: int = 0
    last_eval_step: int = -1
    stopped_early: bool = False

    def start_stage(self, stage: int) -> None:
        """Reset everything but the global step count for a fresh stage."""
        self.stage, self.epoch, self.batch, self.step = stage, 0, 0, 0
        self.loss_sum, self.loss_batches = 0.0, 0
        self.evals_since_best, self.last_eval_step, self.stopped_early = 0, -1, False

    def next_epoch(self) -> None:
        """Move to the start of the next epoch."""
        self.epoch += 1
        self.batch, self.loss_sum, self.loss_batches = 0, 0.0, 0


@dataclass
class TrainState:
    """What a run has done so far: its position, log, best validation score and weights, time spent."""

    position: Position = field(default_factory=Position)
    log: dict[str, Any] = field(default_factory=dict)
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    elapsed: float = 0.0


@dataclass
class Checkpoint:
    """The live objects a checkpoint is written from."""

    state: TrainState
    #: What must match to resume (rows, batch size, seed, scheme, ...); see ``train.run_signature``.
    signature: dict[str, Any]
    #: ``dataclasses.asdict(TrainConfig)``, for the record.
    train_config: dict[str, Any]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scheme: Scheme


# =============================================================================================
# Writing
# =============================================================================================


def save_checkpoint(root: Path, checkpoint: Checkpoint, keep: int) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically and keep the newest ``keep`` checkpoints.

    Every process writes its RNG and scheme state, the main process the rest. The staging folder has a
    fixed name (not ``io.atomic_dir``'s per-process one) because all processes write into it; it is
    moved into place with ``io.replace_dir`` once ``trainer_state.json`` marks it complete.
    """
    dist = PartialState()
    name = f"step-{checkpoint.state.position.global_step:08d}"
    tmp = root / f".{name}.tmp"
    if dist.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.wait_for_everyone()
    _write_rank_files(tmp, dist.process_index, checkpoint.scheme)
    dist.wait_for_everyone()
    final = root / name
    if dist.is_main_process:
        _write_main_files(tmp, checkpoint)
        follow_umask(tmp)
        replace_dir(tmp, final)
        prune_checkpoints(root, keep)
    dist.wait_for_everyone()
    return final


def _write_rank_files(folder: Path, rank: int, scheme: Scheme) -> None:
    rng_tensors, rng_meta = _rng_state()
    scheme_tensors, scheme_plain = _split_state(scheme.state_dict())
    save_file(
        {**rng_tensors, **{f"scheme.{k}": v for k, v in scheme_tensors.items()}},
        str(folder / f"rank-{rank}.safetensors"),
    )
    (folder / f"rank-{rank}.json").write_text(json.dumps({"rng": rng_meta, "scheme": scheme_plain}))


def _write_main_files(folder: Path, checkpoint: Checkpoint) -> None:
    state = checkpoint.state
    save_model(checkpoint.model, str(folder / "model.safetensors"))
    opt_tensors, opt_meta = _optimizer_state(checkpoint.optimizer)
    save_file(opt_tensors, str(folder / "optimizer.safetensors"))
    if state.best_state is not None:
        save_file({k: v.contiguous() for k, v in state.best_state.items()}, str(folder / "best.safetensors"))
    record = {
        "format": CHECKPOINT_FORMAT,
        "position": asdict(state.position),
        "signature": checkpoint.signature,
        "log": state.log,
        "best_score": None if state.best_score == -math.inf else state.best_score,
        "elapsed": state.elapsed,
        "optimizer": opt_meta,
        "scheduler": checkpoint.scheduler.state_dict(),
        "train_config": checkpoint.train_config,
    }
    (folder / STATE_FILE).write_text(json.dumps(record, indent=1))  # written last: marks the folder complete


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder itself, or the newest complete ``step-*`` folder under ``path``."""
    root = Path(path)
    if (root / STATE_FILE).is_file():
        return root
    if not root.is_dir():
        return None
    steps = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return max(steps, key=_step_number) if steps else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``step-*`` folders under ``root``."""
    steps = sorted((p for p in root.glob("step-*") if p.is_dir()), key=_step_number)
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _step_number(path: Path) -> int:
    return int(path.name.split("-")[1])


# =============================================================================================
# Reading
# =============================================================================================


class SavedCheckpoint:
    """A checkpoint read back, restored in two steps as the trainer rebuilds a run.

    :meth:`restore_run` at the start (model weights, scheme state), :meth:`restore_step` once the
    resumed stage's optimiser and scheduler exist (their state, then this process's RNG states, so the
    next random draw is the one the interrupted run would have made).
    """

    def __init__(self, path: Path, rank: int = 0):
        self.path, self.rank = path, rank
        self.record: dict[str, Any] = json.loads((path / STATE_FILE).read_text())
        if self.record.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint {str(path)!r}: format {self.record.get('format')}, expected {CHECKPOINT_FORMAT}"
            )
        self._rank_tensors: dict[str, torch.Tensor] = {}
        self._rank_meta: dict[str, Any] = {}

    def check_signature(self, signature: dict[str, Any]) -> None:
        """Refuse to resume a run whose settings differ from the checkpoint's."""
        saved = self.record["signature"]
        diff = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                f"checkpoint {str(self.path)!r} was written by a different run; differences "
                f"(checkpoint, now): {diff}"
            )

    def train_state(self) -> TrainState:
        """Position, log, best score and weights, elapsed time."""
        best = self.path / "best.safetensors"
        score = self.record["best_score"]
        return TrainState(
            position=Position(**self.record["position"]),
            log=dict(self.record["log"]),
            best_score=-math.inf if score is None else float(score),
            best_state=load_file(str(best)) if best.is_file() else None,
            elapsed=float(self.record["elapsed"]),
        )

    def restore_run(self, model: torch.nn.Module, scheme: Scheme) -> None:
        """Load the model weights and this process's scheme state."""
        load_model(model, str(self.path / "model.safetensors"), strict=True)
        self._rank_tensors = load_file(str(self.path / f"rank-{self.rank}.safetensors"))
        self._rank_meta = json.loads((self.path / f"rank-{self.rank}.json").read_text())
        scheme_state = dict(self._rank_meta["scheme"])
        prefix = "scheme."
        scheme_state.update(
            {k[len(prefix) :]: v for k, v in self._rank_tensors.items() if k.startswith(prefix)}
        )
        scheme.load_state_dict(scheme_state)

    def restore_step(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Load the optimiser and scheduler state, then this process's RNG states (after restore_run)."""
        _load_optimizer_state(
            optimizer, load_file(str(self.path / "optimizer.safetensors")), self.record["optimizer"]
        )
        scheduler.load_state_dict(self.record["scheduler"])
        _set_rng_state(self._rank_tensors, self._rank_meta["rng"])


# =============================================================================================
# State as tensors + JSON
# =============================================================================================


def _split_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return tensors, rest


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "plain_state": plain, "state_ids": [str(p) for p in sd["state"]]}


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {
        int(pid): dict(meta["plain_state"].get(pid, {})) for pid in meta["state_ids"]
    }
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state[int(pid)][name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    meta = {
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(gauss)]),
        "python": json.dumps([py[0], list(py[1]), py[2]]),
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss_next))
