"""Fine-tuning loop for multi-exit models (Hugging Face Accelerate), resumable to the bit.

AdamW (no decay on biases and norms), linear schedule with warm-up, gradient clipping and accumulation,
per-epoch validation with per-exit scores, best-checkpoint selection, seeds and progress bars. The same
code runs on one CPU, a GPU, or several processes under ``accelerate launch`` / ``torchrun``.

Two entry points: :func:`train` fine-tunes a given model with a scheme (:mod:`offramp.schemes`: by name,
config or built); :func:`build_and_train` builds the model from a :class:`RunSpec` first (and trains
``multi-model`` cascades member by member). Inside, a :class:`Trainer` runs stage → epoch → step, with
validation at each epoch's end.

Resumable checkpoints (``TrainConfig.save_every``, :mod:`offramp.checkpoint`): the data order is a pure
function of (seed, stage, epoch) and checkpoints sit on optimiser-step boundaries, so a run killed and
resumed ends with the same weights as an uninterrupted one.

Validation runs at each epoch's end, or every ``TrainConfig.eval_every`` optimiser steps; with
``TrainConfig.patience`` a stage stops once its validation score has not improved for that many
evaluations in a row (early stopping), keeping the best weights. ``TrainConfig.teacher`` adds
distillation from an external fine-tuned teacher to every exit's loss (:mod:`offramp.teacher`,
:func:`offramp.losses.teacher_kd_loss`): (1 − W)·L_scheme + W·Σ_k ω_k·τ²·KL(p_teacher^τ ‖ p_k^τ).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import AutoConfig, get_linear_schedule_with_warmup

from .cascade import CascadeModel, truncate_backbone, truncated_member
from .checkpoint import Checkpoint, SavedCheckpoint, TrainState, find_checkpoint, save_checkpoint
from .data import TextDataset, make_loader
from .evaluate import SELECT_METRICS, per_exit_scores, selection_score
from .io import write_json_atomic
from .losses import teacher_kd_loss
from .model import ModelLoadError, MultiExitModel, parse_exits, resolve_backbone
from .progress import progress_bar
from .schemes import (
    LearnedExitConfig,
    LossFn,
    LossFnScheme,
    MultiModelConfig,
    Scheme,
    SchemeConfig,
    Stage,
    build_scheme,
    get_scheme_config,
)
from .teacher import TeacherInfo, TeacherLogits, teacher_logits


@dataclass
class TrainConfig:
    """Optimisation settings; defaults suit a small BERT-style encoder on a GLUE task."""

    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    max_length: int = 128
    eval_batch_size: int = 128
    seed: int = 42
    select_by: str = "mean"  # "mean" over exits or "last" exit, on the validation split
    #: What selection and early stopping compare on the validation split: "score" (the task's metric)
    #: or "loss" (cross-entropy / squared error; lower is better, as Hugging Face Trainer's default).
    select_metric: str = "score"
    progress: bool = True
    #: Write a resumable checkpoint every N optimiser steps (0: never).
    save_every: int = 0
    #: Where checkpoints go; default ``<out_dir>.checkpoints`` next to the output folder.
    checkpoint_dir: str | None = None
    #: How many checkpoints to keep (oldest deleted first).
    keep_checkpoints: int = 2
    #: Stop (as if killed) after this many optimiser steps in all; the schedule still spans the full run.
    stop_after: int | None = None
    #: Train on the CPU even when a GPU is present.
    cpu: bool = False
    #: Batch rows of similar length together (HF ``group_by_length``): less padding, faster steps.
    group_by_length: bool = False
    #: Validate every N optimiser steps of a stage (and at each epoch's end); None: at each epoch's end.
    eval_every: int | None = None
    #: Early stopping: end a stage when the validation score has not improved for this many evaluations
    #: in a row (its best weights are kept); None: train every epoch. Needs validation data.
    patience: int | None = None
    #: An external fine-tuned teacher (offramp model folder: its final exit; or a Hugging Face
    #: sequence-classification folder) distilled into every exit; see ``offramp.teacher``.
    teacher: str | None = None
    #: τ of the teacher's distillation term (softens both distributions; the term is scaled by τ²).
    kd_temperature: float = 2.0
    #: W: each exit's loss is (1 − W)·(scheme loss) + W·τ²·KL(teacher_τ ‖ exit_τ).
    kd_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "eval_batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.select_by not in ("mean", "last"):
            raise ValueError(f"select_by must be 'mean' or 'last', got {self.select_by!r}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")
        for name in ("eval_every", "patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if not 0 <= self.kd_weight <= 1:
            raise ValueError(f"kd_weight must be in [0, 1], got {self.kd_weight}")


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or "norm" in name.lower()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, without weight decay on biases and norms (BERT convention)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if not _no_decay(n)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if _no_decay(n)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


# =============================================================================================
# Data order: a pure function of (seed, stage, epoch), sharded over processes
# =============================================================================================


class BatchOrder:
    """Which rows each process sees, batch by batch: reproducible from (seed, stage, epoch) alone.

    Global batches are consecutive slices of a seeded permutation; process r takes global batches
    r, r+W, r+2W, …; the list is padded by wrapping around so every process has the same number of
    batches (as Accelerate's ``even_batches``). Resuming needs only the position within the epoch.

    ``lengths`` (token counts per row) turns on length grouping, as the ``group_by_length`` of HF's
    Trainer: the permutation is cut into mega-batches of ``MEGA_BATCHES`` batches, each is sorted by
    length and sliced into batches, and the batches are shuffled. Batches then hold rows of similar
    length, so dynamic padding wastes less (SST-2 phrases: about 3x fewer padded tokens).
    """

    MEGA_BATCHES = 50

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        seed: int,
        world: int = 1,
        rank: int = 0,
        lengths: Sequence[int] | None = None,
    ):
        if num_rows < 1:
            raise ValueError("no training rows")
        if lengths is not None and len(lengths) != num_rows:
            raise ValueError(f"lengths has {len(lengths)} entries, expected one per row ({num_rows})")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.world, self.rank = world, rank
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.num_global = math.ceil(num_rows / batch_size)
        self.per_rank = math.ceil(self.num_global / world)

    def batches(self, stage: int, epoch: int) -> list[list[int]]:
        """This process's batches (row indices) for one epoch of one stage."""
        rng = np.random.default_rng([self.seed, stage, epoch])
        perm = rng.permutation(self.num_rows)
        if self.lengths is None:
            glob = [perm[i : i + self.batch_size].tolist() for i in range(0, self.num_rows, self.batch_size)]
        else:
            glob = self._length_grouped(perm, rng)
        while len(glob) < self.per_rank * self.world:
            glob.append(glob[len(glob) % self.num_global])
        return glob[self.rank :: self.world][: self.per_rank]

    def _length_grouped(self, perm: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
        assert self.lengths is not None
        size = self.batch_size * self.MEGA_BATCHES
        glob: list[list[int]] = []
        for i in range(0, self.num_rows, size):
            mega = perm[i : i + size]
            mega = mega[np.argsort(-self.lengths[mega], kind="stable")]
            glob += [mega[j : j + self.batch_size].tolist() for j in range(0, len(mega), self.batch_size)]
        return [glob[i] for i in rng.permutation(len(glob))]


# =============================================================================================
# The loop
# =============================================================================================


def resolve_scheme(
    model: MultiExitModel,
    scheme: Scheme | SchemeConfig | str | None,
    loss_fn: LossFn | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    learned_exit: LearnedExitConfig | bool | None = None,
) -> Scheme:
    """A built scheme from what :func:`train` accepts: a scheme, a config, a name, or a bare loss hook."""
    if isinstance(scheme, Scheme):
        return scheme
    if scheme is None and loss_fn is not None:
        built = LossFnScheme(model, loss_fn, forward_kwargs)
        if getattr(model.config, "learned_exit", False):
            built.learned = (
                learned_exit if isinstance(learned_exit, LearnedExitConfig) else LearnedExitConfig()
            )
        return built
    built = build_scheme(scheme or "joint", model, learned_exit)
    built.forward_kwargs.update(forward_kwargs or {})
    return built


def run_signature(
    cfg: TrainConfig, n_rows: int, world: int, scheme: Scheme, teacher: TeacherInfo | None = None
) -> dict[str, Any]:
    """What a checkpoint must share with the run resuming it (else the data order or schedule differ)."""
    sig = {
        "rows": n_rows,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "world_size": world,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "scheme": scheme.config.to_dict(),
    }
    # Options below enter only when used, so checkpoints written before they existed still resume.
    if cfg.group_by_length:
        sig["group_by_length"] = True
    for name in ("eval_every", "patience"):
        if getattr(cfg, name) is not None:
            sig[name] = getattr(cfg, name)
    if teacher is not None:
        sig["teacher"] = teacher_record(teacher, cfg)
    return sig


def teacher_record(teacher: TeacherInfo, cfg: TrainConfig) -> dict[str, Any]:
    """The teacher and distillation settings, as saved in ``config.info["teacher"]`` and checked on resume."""
    return {
        "path": teacher.path,
        "kind": teacher.kind,
        "fingerprint": teacher.fingerprint,
        "kd_temperature": cfg.kd_temperature,
        "kd_weight": cfg.kd_weight,
    }


def checkpoint_root(cfg: TrainConfig, out_dir: str | Path | None) -> Path | None:
    """``cfg.checkpoint_dir``, else ``<out_dir>.checkpoints`` beside the output folder, else None."""
    if cfg.checkpoint_dir:
        return Path(cfg.checkpoint_dir)
    if out_dir is not None:
        return Path(out_dir).with_name(Path(out_dir).name + ".checkpoints")
    return None


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for this process; refuses a process group smaller than the launcher started."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Several processes without a GPU (torchrun on CPU): Accelerate only forms a group with cpu=True.
    multi_cpu = world > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=cfg.cpu or multi_cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if world != accelerator.num_processes:
        raise RuntimeError(
            f"launched as {os.environ['WORLD_SIZE']} processes but Accelerate formed a group of "
            f"{accelerator.num_processes}: an Accelerator/PartialState was created before train() without "
            "cpu=True; on a machine without a GPU set ACCELERATE_USE_CPU=1 or create none before training"
        )
    return accelerator


@dataclass
class StageRun:
    """One stage's live objects: its optimiser and schedule span the stage."""

    index: int
    stage: Stage
    epochs: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    wrapped: torch.nn.Module
    select_by: str
    forward_kwargs: dict[str, Any]


class Trainer:
    """One training run of ``model`` with a built scheme: :meth:`run` → stages → epochs → steps.

    Holds the run's fixed parts (accelerator, data order, checkpoint folder) and its evolving
    :class:`offramp.checkpoint.TrainState` (position, log, best epoch), which is what checkpoints save.
    """

    def __init__(
        self,
        model: MultiExitModel,
        train_data: TextDataset,
        val_data: TextDataset | None,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        *,
        scheme: Scheme,
        resume: bool | str | Path = False,
    ):
        self.model, self.val_data, self.cfg, self.out_dir = model, val_data, cfg, out_dir
        self.scheme, self.stages, self.resume = scheme, scheme.stages(), resume
        self.accelerator = make_accelerator(cfg)
        set_seed(cfg.seed)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        loader = make_loader(train_data, model.tokenizer, cfg.batch_size, cfg.max_length, shuffle=False)
        self.rows, self.collate = loader.dataset, loader.collate_fn
        lengths = [len(r["input_ids"]) for r in self.rows.features] if cfg.group_by_length else None
        self.order = BatchOrder(len(self.rows), cfg.batch_size, cfg.seed, self.world, self.rank, lengths)
        self.steps_per_epoch = math.ceil(self.order.per_rank / cfg.grad_accum)
        if cfg.patience is not None and not (val_data is not None and len(val_data)):
            raise ValueError(f"patience={cfg.patience} (early stopping) needs validation data; got none")
        self.teacher = self._teacher(train_data)
        info = self.teacher.info if self.teacher is not None else None
        self.signature = run_signature(cfg, len(self.rows), self.world, scheme, info)
        self.checkpoint_root = checkpoint_root(cfg, out_dir)
        if (
            (cfg.save_every or resume)
            and self.checkpoint_root is None
            and not isinstance(resume, (str, Path))
        ):
            raise ValueError("checkpoints need a folder: give out_dir or TrainConfig.checkpoint_dir")
        log = {"config": asdict(cfg), "scheme": scheme.config.to_dict(), "stages": [], "epochs": []}
        self.state = TrainState(log=log)
        self.saved: SavedCheckpoint | None = None  # set while the stage to resume is being rebuilt
        self.step_seconds: list[float] = []  # wall time of each optimiser step here (not checkpointed)
        self.started = 0.0

    def _teacher(self, train_data: TextDataset) -> TeacherLogits | None:
        """The teacher's logits for every training row (computed once, up front), or None without one."""
        cfg = self.cfg
        if cfg.teacher is None:
            return None
        self._say(f"running the teacher {cfg.teacher} over {len(train_data)} training examples")
        device = self.accelerator.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's draws stay
            teacher = teacher_logits(
                cfg.teacher,
                train_data,
                batch_size=cfg.eval_batch_size,
                max_length=cfg.max_length,
                device=device,
                progress=cfg.progress and self.accelerator.is_local_main_process,
            )
        self.model.config.info["teacher"] = teacher_record(teacher.info, cfg)
        return teacher

    @property
    def log(self) -> dict[str, Any]:
        """The training log (part of the checkpointed state)."""
        return self.state.log

    def _say(self, line: str) -> None:
        """A result line (an epoch's validation scores): printed even with progress bars off."""
        if self.accelerator.is_local_main_process:
            tqdm.write(line, file=sys.stderr)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train every stage (from the checkpoint when resuming); save the model; return the log."""
        self.restore_or_start()
        self.started = time.perf_counter() - self.state.elapsed
        with self.scheme.attached(self.model):
            for index in range(self.state.position.stage, len(self.stages)):
                if not self.run_stage(index):
                    return self._stopped()
        return self._finish()

    def restore_or_start(self) -> None:
        """Continue from a checkpoint (``resume``), or start the scheme fresh."""
        path = None
        if isinstance(self.resume, (str, Path)):
            path = find_checkpoint(self.resume)
            if path is None:
                raise FileNotFoundError(f"no checkpoint found at {str(self.resume)!r}")
        elif self.resume and self.checkpoint_root is not None:  # none yet: start fresh
            path = find_checkpoint(self.checkpoint_root)
        if path is None:
            self.scheme.start(self.cfg.seed, self.rank)
            return
        self.saved = SavedCheckpoint(path, self.rank)
        self.saved.check_signature(self.signature)
        self.state = self.saved.train_state()
        self.saved.restore_run(self.model, self.scheme)
        if self.accelerator.is_main_process and self.cfg.progress:
            tqdm.write(f"resuming from {path} (step {self.state.position.global_step})")

    def run_stage(self, index: int) -> bool:
        """Train one stage to its end and keep its best epoch; False when ``stop_after`` ended the run."""
        state, pos = self.state, self.state.position
        if self.saved is None:
            pos.start_stage(index)
            state.best_score, state.best_state = -math.inf, None
        run = self.prepare_stage(index)
        if self.saved is not None:
            self.saved.restore_step(run.optimizer, run.scheduler)
            self.saved = None
        else:
            self.log["stages"].append({"name": run.stage.name, "total_steps": run.total_steps})
        for epoch in range(pos.epoch, run.epochs):
            if not self.run_epoch(run, epoch):
                return False
            self.end_epoch(run, epoch)
            if pos.stopped_early:
                self.log["stages"][index]["early_stopped"] = pos.global_step
                break
        if state.best_state is not None:
            self.model.load_state_dict(state.best_state)
            self.log["stages"][index]["best_val_score"] = state.best_score
            self.log["best_val_score"] = state.best_score
        pos.stage = index + 1
        return True

    def prepare_stage(self, index: int) -> StageRun:
        """Freeze what the stage does not train; a fresh optimiser and schedule over the stage's steps."""
        stage, cfg, model = self.stages[index], self.cfg, self.model
        trainable = stage.trainable(model) if stage.trainable is not None else None
        for name, param in model.named_parameters():
            param.requires_grad_(trainable is None or name in trainable)
        stage_epochs = stage.epochs or cfg.epochs
        total_steps = max(1, math.ceil(self.steps_per_epoch * stage_epochs))
        optimizer = make_optimizer(model, cfg)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(cfg.warmup_ratio * total_steps), total_steps
        )
        wrapped, optimizer = self.accelerator.prepare(model, optimizer)
        return StageRun(
            index=index,
            stage=stage,
            epochs=math.ceil(stage_epochs),
            total_steps=total_steps,
            optimizer=optimizer,
            scheduler=scheduler,
            wrapped=wrapped,
            select_by=stage.select_by or cfg.select_by,
            forward_kwargs={**self.scheme.forward_kwargs, **stage.forward_kwargs},
        )

    # -- one epoch -------------------------------------------------------------------------------
    def run_epoch(self, run: StageRun, epoch: int) -> bool:
        """The epoch's optimiser steps from the current position; False when ``stop_after`` is reached."""
        pos, cfg = self.state.position, self.cfg
        pos.epoch = epoch
        self.model.train()
        batches = self.order.batches(run.index, epoch)
        windows = [batches[i : i + cfg.grad_accum] for i in range(pos.batch, len(batches), cfg.grad_accum)]
        bar = self._progress_bar(run, epoch, len(batches), pos.batch)
        seen, epoch_start = 0, time.perf_counter()
        for window in windows:
            if pos.step >= run.total_steps or pos.stopped_early:
                break
            seen += self.step(run, window, epoch)
            pos.batch = min(pos.batch + len(window), len(batches))
            bar.update(len(window))
            rate = seen * self.world / max(time.perf_counter() - epoch_start, 1e-9)
            bar.set_postfix(loss=f"{pos.loss_sum / max(pos.loss_batches, 1):.4f}", ex_per_s=f"{rate:.0f}")
            if cfg.eval_every and pos.step % cfg.eval_every == 0 and self.val_data:
                self.evaluate_now(run, epoch)
            if cfg.save_every and pos.global_step % cfg.save_every == 0:
                self.save_checkpoint(run)
            if cfg.stop_after is not None and pos.global_step >= cfg.stop_after:
                bar.close()
                return False
        bar.close()
        return True

    def _progress_bar(self, run: StageRun, epoch: int, total: int, initial: int) -> Any:
        desc = f"epoch {epoch + 1}/{run.epochs}"
        return progress_bar(
            total=total,
            initial=initial,
            desc=f"{run.stage.name} {desc}" if len(self.stages) > 1 else desc,
            enabled=self.cfg.progress and self.accelerator.is_local_main_process,
        )

    def step(self, run: StageRun, window: list[list[int]], epoch: int) -> int:
        """One optimiser step over ``window`` (``grad_accum`` batches); returns the rows seen."""
        start, pos, accelerator = time.perf_counter(), self.state.position, self.accelerator
        info = {
            "regression": self.model.is_regression,
            "world_size": self.world,
            "step": pos.step,
            "total_steps": run.total_steps,
            "epoch": epoch,
            "stage": run.stage.name,
            "global_step": pos.global_step,
        }
        seen = 0
        for i, idx in enumerate(window):
            batch = {
                k: v.to(accelerator.device) for k, v in self.collate([self.rows[j] for j in idx]).items()
            }
            sync = accelerator.no_sync(run.wrapped) if i < len(window) - 1 else nullcontext()
            with sync:
                output = run.wrapped(**batch, **run.forward_kwargs)
                loss = run.stage.loss(output, batch, info)
                if self.teacher is not None:
                    loss = self._distil(run, loss, output.logits, idx)
                accelerator.backward(loss / len(window))
            pos.loss_sum += float(loss.detach())
            pos.loss_batches += 1
            seen += len(idx)
        accelerator.clip_grad_norm_(run.wrapped.parameters(), self.cfg.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        self.step_seconds.append(time.perf_counter() - start)
        pos.step += 1
        pos.global_step += 1
        return seen

    def _distil(
        self, run: StageRun, loss: torch.Tensor, logits: torch.Tensor, idx: list[int]
    ) -> torch.Tensor:
        """The stage's loss mixed with the teacher's distillation term on every exit it trains."""
        assert self.teacher is not None
        cfg = self.cfg
        return teacher_kd_loss(
            loss,
            logits,
            self.teacher.rows(idx, logits.device),
            run.stage.exit_mix(logits.shape[0]),
            cfg.kd_weight,
            cfg.kd_temperature,
            self.model.is_regression,
        )

    def save_checkpoint(self, run: StageRun) -> Path:
        """Write a resumable checkpoint of the run as it stands (see :mod:`offramp.checkpoint`)."""
        assert self.checkpoint_root is not None  # checked in __init__ when save_every is set
        self.state.elapsed = time.perf_counter() - self.started
        checkpoint = Checkpoint(
            state=self.state,
            signature=self.signature,
            train_config=asdict(self.cfg),
            model=self.model,
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            scheme=self.scheme,
        )
        return save_checkpoint(self.checkpoint_root, checkpoint, self.cfg.keep_checkpoints)

    # -- end of an epoch -------------------------------------------------------------------------
    def end_epoch(self, run: StageRun, epoch: int) -> None:
        """Scheme hook, validation, best-epoch bookkeeping, one log entry; then move to the next epoch."""
        self.scheme.on_epoch_end(self._gather)
        pos = self.state.position
        entry: dict[str, Any] = {
            "stage": run.stage.name,
            "epoch": epoch + 1,
            "loss": pos.loss_sum / max(pos.loss_batches, 1),
            "steps": pos.global_step,
        }
        if pos.last_eval_step == pos.global_step:  # validated at this very step (eval_every)
            entry["val"] = self.log["evals"][-1]["val"]
        elif self.val_data:
            self.validate(entry, run.select_by)
        if pos.stopped_early:
            entry["early_stop"] = True
        self.log["epochs"].append(entry)
        self._say(epoch_line(entry))
        pos.next_epoch()

    def evaluate_now(self, run: StageRun, epoch: int) -> None:
        """Validation within an epoch (``eval_every``): one ``log["evals"]`` entry; back to training."""
        pos = self.state.position
        entry: dict[str, Any] = {"stage": run.stage.name, "epoch": epoch + 1, "steps": pos.global_step}
        self.validate(entry, run.select_by)
        self.log.setdefault("evals", []).append(entry)
        self._say(f"step {pos.global_step} (epoch {epoch + 1}):" + val_text(entry))
        self.model.train()

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` over processes (itself with one process)."""
        if self.world == 1:
            return tensor
        return self.accelerator.gather(tensor.to(self.accelerator.device)).cpu()

    def validate(self, entry: dict[str, Any], select_by: str) -> None:
        """Score every exit on the validation split into ``entry``; keep the weights if best so far;
        count validations without improvement (early stopping once ``patience`` of them in a row)."""
        cfg, state, pos = self.cfg, self.state, self.state.position
        scores = per_exit_scores(self.model, self.val_data, cfg.eval_batch_size, cfg.max_length)  # type: ignore[arg-type]
        entry["val"] = scores
        score = selection_score(scores, select_by, cfg.select_metric)
        pos.last_eval_step = pos.global_step
        if score > state.best_score:
            state.best_score = score
            state.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            entry["best"] = True
            pos.evals_since_best = 0
        else:
            pos.evals_since_best += 1
        if cfg.patience is not None and pos.evals_since_best >= cfg.patience:
            pos.stopped_early = True

    # -- the end ---------------------------------------------------------------------------------
    def _stopped(self) -> dict[str, Any]:
        self.log["stopped"] = self.state.position.global_step
        self.log["train_seconds"] = time.perf_counter() - self.started
        self.log["step_seconds"] = self.step_seconds
        self.model.requires_grad_(True)
        return self.log

    def _finish(self) -> dict[str, Any]:
        log, model = self.log, self.model
        model.requires_grad_(True)
        log["total_steps"] = sum(s["total_steps"] for s in log["stages"])
        log["train_seconds"] = time.perf_counter() - self.started
        model.eval()
        if self.out_dir is not None and self.accelerator.is_main_process:
            model.config.info["train"] = {k: v for k, v in log.items() if k not in ("epochs",)}
            if self.scheme.learned is not None:
                model.config.info["train"]["learned_exit"] = asdict(self.scheme.learned)
            write_json_atomic(model.save(self.out_dir) / "train_log.json", log)
        self.accelerator.wait_for_everyone()
        log["step_seconds"] = self.step_seconds
        return log


def train(
    model: MultiExitModel,
    train_data: TextDataset,
    val_data: TextDataset | None,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    loss_fn: LossFn | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    *,
    scheme: Scheme | SchemeConfig | str | None = None,
    learned_exit: LearnedExitConfig | bool | None = None,
    resume: bool | str | Path = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place with a training scheme; keep the best validation epoch; save it.

    ``scheme``: a name (``joint`` …), a config or a built :class:`~offramp.schemes.Scheme`; or a bare
    ``loss_fn(output, batch, info)`` hook. ``resume``: True continues from the newest checkpoint in the
    checkpoint folder (starting fresh if there is none), a path continues from that checkpoint. Returns
    the training log (per-epoch loss and validation per-exit scores, timing); ``log["stopped"]`` is set
    when ``cfg.stop_after`` ended the run early.
    """
    built = resolve_scheme(model, scheme, loss_fn, forward_kwargs, learned_exit)
    return Trainer(model, train_data, val_data, cfg, out_dir, scheme=built, resume=resume).run()


def epoch_line(entry: dict[str, Any]) -> str:
    """One printed line per epoch: loss, and validation scores per exit."""
    line = f"epoch {entry['epoch']}: loss {entry['loss']:.4f}"
    if "val" in entry:
        line += " |" + val_text(entry)
    return line + (
        " (early stop: no better validation score within the patience)" if entry.get("early_stop") else ""
    )


def val_text(entry: dict[str, Any]) -> str:
    """`` val <metric> per exit: …`` of a log entry, marked when it is the best so far."""
    key = entry["val"][0]["metric"]
    text = f" val {key} per exit: " + " ".join(f"{s['score']:.3f}" for s in entry["val"])
    if "loss" in entry["val"][0]:
        text += " | val loss: " + " ".join(f"{s['loss']:.3f}" for s in entry["val"])
    return text + (" (best)" if entry.get("best") else "")


# =============================================================================================
# Build a model from a RunSpec, then train it (the CLI's entry point)
# =============================================================================================

#: ``factory(exits, **config_kwargs)``: a model with those exits; ``config_kwargs`` are ``ExitConfig``
#: fields build_and_train sets from the data (problem_type, dropout, learned_exit, label_names, task,
#: max_length).
ModelFactory = Callable[..., MultiExitModel]


@dataclass
class RunSpec:
    """What to train: the model to build and the scheme to train it with (optimisation: ``TrainConfig``).

    ``scheme``: a registered name (``offramp.schemes.list_schemes()``) with ``scheme_options`` (strings
    are converted to the option's type), or a config. ``exits``: a spec like ``"1,3,6"`` or layers
    (for ``multi-model``, the member depths). ``learned_exit`` adds BERxiT confidence heads
    (``learned_exit_options``: ``loss``, ``detach``, ``weight``). ``info`` is saved with the model.
    ``model_factory(exits, **config_kwargs)`` replaces loading ``backbone`` (tests use tiny models).
    """

    backbone: str = "minilm-l6"
    scheme: str | SchemeConfig = "joint"
    scheme_options: dict[str, Any] = field(default_factory=dict)
    exits: str | list[int] | None = None
    head: str = "auto"
    dropout: float = 0.1
    learned_exit: bool | LearnedExitConfig = False
    learned_exit_options: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    model_factory: ModelFactory | None = None

    def scheme_config(self) -> SchemeConfig:
        """The scheme as a config (options validated)."""
        if isinstance(self.scheme, SchemeConfig):
            return self.scheme
        return get_scheme_config(self.scheme, **(self.scheme_options or {}))

    def learned_config(self) -> LearnedExitConfig | None:
        """The learned-exit heads' config, or None without them."""
        if isinstance(self.learned_exit, LearnedExitConfig):
            return self.learned_exit
        if self.learned_exit or self.learned_exit_options:
            return LearnedExitConfig(**(self.learned_exit_options or {}))
        return None


@dataclass
class _Job:
    """One build_and_train call, resolved: data, spec, config, and what follows from them."""

    spec: RunSpec
    cfg: TrainConfig
    train_data: TextDataset
    val_data: TextDataset | None
    out_dir: str | Path | None
    resume: bool | str | Path
    on_model: Callable[[MultiExitModel], None] | None
    scheme: SchemeConfig
    learned: LearnedExitConfig | None

    def model_kwargs(self) -> dict[str, Any]:
        """``ExitConfig`` fields that follow from the data and the spec."""
        data = self.train_data
        return {
            "problem_type": "regression" if data.is_regression else "classification",
            "dropout": self.spec.dropout,
            "learned_exit": self.learned is not None,
            "label_names": data.label_names,
            "task": data.task,
            "max_length": self.cfg.max_length,
        }

    def provenance(self) -> dict[str, Any]:
        """What the saved model records about how it was trained."""
        base = {"scheme": self.scheme.to_dict(), "train_size": len(self.train_data), "seed": self.cfg.seed}
        return {**base, **(self.spec.info or {})}

    def announce(self, model: MultiExitModel) -> None:
        """Tell the caller's ``on_model`` about a model about to train."""
        if self.on_model is not None:
            self.on_model(model)


def build_and_train(
    train_data: TextDataset,
    val_data: TextDataset | None = None,
    out_dir: str | Path | None = None,
    spec: RunSpec | None = None,
    config: TrainConfig | None = None,
    *,
    resume: bool | str | Path = False,
    on_model: Callable[[MultiExitModel], None] | None = None,
) -> tuple[MultiExitModel | CascadeModel, dict[str, Any]]:
    """Build a model for ``train_data``'s task as ``spec`` says, train it, save it to ``out_dir``.

    ``config``: the optimisation settings (default :class:`TrainConfig`). For ``multi-model`` the
    exits are the member depths and the result is a :class:`CascadeModel`. ``resume``: as in
    :func:`train`. ``on_model(model)`` is called once a model (each cascade member) is built, before it
    trains (the CLI prints what it is about to train).
    """
    spec = spec or RunSpec()
    cfg = config or TrainConfig()
    scheme, learned = spec.scheme_config(), spec.learned_config()
    if train_data.labels is None:
        raise ValueError("training data has no labels")
    job = _Job(spec, cfg, train_data, val_data, out_dir, resume, on_model, scheme, learned)
    if isinstance(scheme, MultiModelConfig):
        return _train_cascade(job)
    set_seed(cfg.seed)  # head initialisation is part of the run's seed
    if spec.model_factory is not None:
        model = spec.model_factory(spec.exits, **job.model_kwargs())
    else:
        model = MultiExitModel.from_backbone(
            spec.backbone,
            num_labels=train_data.num_labels,
            exits=spec.exits,
            head=spec.head,
            **job.model_kwargs(),
        )
    model.config.info.update(job.provenance())
    job.announce(model)
    log = train(model, train_data, val_data, cfg, out_dir, scheme=scheme, learned_exit=learned, resume=resume)
    return model, log


def _num_layers(backbone: str, factory: ModelFactory | None) -> int:
    if factory is not None:
        return factory(None).adapter.num_layers  # config defaults: the depth is all that is read
    try:
        return int(AutoConfig.from_pretrained(resolve_backbone(backbone)).num_hidden_layers)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load backbone {backbone!r}: not a local folder with a model, a known alias, or a "
            f"reachable hub name ({exc.__class__.__name__})"
        ) from exc


def _train_member(
    job: _Job, k: int, depth: int, done: Path | None, ck_root: Path | None
) -> tuple[MultiExitModel, dict[str, Any]]:
    """Build member ``k`` (0-based: the backbone cut to ``depth`` layers, one exit there) and train it
    alone with CE, saving it to ``done``; its checkpoints go to ``ck_root/member-k``."""
    spec, kwargs = job.spec, job.model_kwargs()
    set_seed(job.cfg.seed)
    if spec.model_factory is not None:
        member = truncate_backbone(spec.model_factory([depth], **kwargs), depth)
    else:
        member = truncated_member(spec.backbone, job.train_data.num_labels, depth, spec.head, **kwargs)
    member.config.info.update({**job.provenance(), "cascade_member": k + 1})
    job.announce(member)
    ck_dir = str(ck_root / f"member-{k + 1}") if ck_root is not None else None
    cfg = replace(job.cfg, checkpoint_dir=ck_dir)
    resume = job.resume and ck_root is not None
    log = train(
        member,
        job.train_data,
        job.val_data,
        cfg,
        done,
        scheme="joint",
        learned_exit=job.learned,
        resume=resume,
    )
    return member, log


def _load_member(done: Path) -> tuple[MultiExitModel, dict[str, Any]]:
    """A member finished by an earlier, interrupted run, and its training log."""
    log_file = done / "train_log.json"
    return MultiExitModel.load(done), json.loads(log_file.read_text()) if log_file.is_file() else {}


def _train_cascade(job: _Job) -> tuple[CascadeModel, dict[str, Any]]:
    """SWEET's Multi-Model baseline: one truncated model per depth, each trained alone with CE.

    Finished members are kept in ``<out_dir>.members/`` (and each member's checkpoints in
    ``<checkpoint_dir or out_dir.checkpoints>/member-k``), so a resumed run skips them.
    """
    out_dir = job.out_dir
    depths = parse_exits(job.spec.exits, _num_layers(job.spec.backbone, job.spec.model_factory))
    staging = Path(out_dir).with_name(Path(out_dir).name + ".members") if out_dir is not None else None
    ck_root = checkpoint_root(job.cfg, out_dir)
    members: list[MultiExitModel] = []
    logs: list[dict[str, Any]] = []
    for k, depth in enumerate(depths):
        done = staging / f"member-{k + 1}" if staging is not None else None
        if job.resume and done is not None and (done / "offramp.json").is_file():
            member, log = _load_member(done)
        else:
            member, log = _train_member(job, k, depth, done, ck_root)
            if "stopped" in log:
                return CascadeModel(members + [member]), {"members": logs + [log], "stopped": log["stopped"]}
        members.append(member)
        logs.append(log)
    return _save_cascade(job, CascadeModel(members), logs, staging)


def _save_cascade(
    job: _Job, cascade: CascadeModel, logs: list[dict[str, Any]], staging: Path | None
) -> tuple[CascadeModel, dict[str, Any]]:
    """Save the finished cascade with its members' logs; drop the staged members."""
    cascade.config.info.update(job.provenance())
    teacher = cascade.members[-1].config.info.get("teacher")
    if teacher is not None:
        cascade.config.info["teacher"] = teacher
    log = {"members": logs, "train_seconds": sum(m.get("train_seconds", 0.0) for m in logs)}
    state = PartialState()  # already set up by train()
    if job.out_dir is not None and state.is_main_process:
        cascade.config.info["train"] = {
            "members": [{k: v for k, v in m.items() if k != "epochs"} for m in logs]
        }
        write_json_atomic(cascade.save(job.out_dir) / "train_log.json", log)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    return cascade, log
