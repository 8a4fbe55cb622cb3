"""Fine-tuning loop for multi-exit models (Hugging Face Accelerate), resumable to the bit.

AdamW (no decay on biases and norms), linear schedule with warm-up, gradient clipping and accumulation,
per-epoch validation with per-exit scores, best-checkpoint selection, seeds and progress bars. The same
code runs on one CPU, a GPU, or several processes under ``accelerate launch`` / ``torchrun``.

What is trained is a :class:`offramp.losses.Scheme` (by name: ``joint``, ``weighted``, ``beem-kd``,
``sweet``, ``cosee``, ``two-stage``; ``multi-model`` goes through :func:`build_and_train`).

Resumable checkpoints (``TrainConfig.save_every``): every N optimiser steps a folder
``step-XXXXXXXX`` is written atomically with the model, optimiser, scheduler, every process's RNG
states, the data-order position and the scheme's state — tensors in safetensors, the rest in JSON,
no pickle anywhere (Accelerate's ``save_state`` pickles RNG states, so it is not used). The data order
is a pure function of (seed, stage, epoch), and checkpoints sit on optimiser-step boundaries, so a run
killed and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm
from transformers import AutoConfig, get_linear_schedule_with_warmup

from .cascade import CascadeModel, truncate_backbone, truncated_member
from .data import TextDataset, make_loader
from .evaluate import per_exit_scores, selection_score
from .losses import (
    LearnedExitConfig,
    LossFn,
    MultiModelConfig,
    Scheme,
    SchemeConfig,
    build_scheme,
    get_scheme_config,
    joint_loss,
)
from .io import replace_dir
from .model import ModelLoadError, MultiExitModel, parse_exits, resolve_backbone

CHECKPOINT_FORMAT = 1
STATE_FILE = "trainer_state.json"


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
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")


def default_loss(output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
    """Σ_k CE_k (the ``joint`` scheme)."""
    return joint_loss(output.logits, batch["labels"], regression=info["regression"])


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


class _LossFnScheme(Scheme):
    """A bare ``loss_fn(output, batch, info)`` hook as a one-stage scheme."""

    def __init__(self, model: MultiExitModel, loss_fn: LossFn, forward_kwargs: dict[str, Any] | None):
        super().__init__(SchemeConfig(), model)
        self.fn = loss_fn
        self.forward_kwargs = dict(forward_kwargs or {})

    def task_loss(self, output: Any, batch: dict[str, torch.Tensor], info: dict[str, Any]) -> torch.Tensor:
        return self.fn(output, batch, info)


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
        self.num_rows, self.batch_size, self.seed, self.world, self.rank = (
            num_rows,
            batch_size,
            seed,
            world,
            rank,
        )
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.num_global = math.ceil(num_rows / batch_size)
        self.per_rank = math.ceil(self.num_global / world)

    def batches(self, stage: int, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, stage, epoch])
        perm = rng.permutation(self.num_rows)
        if self.lengths is None:
            glob = [perm[i : i + self.batch_size].tolist() for i in range(0, self.num_rows, self.batch_size)]
        else:
            size = self.batch_size * self.MEGA_BATCHES
            glob = []
            for i in range(0, self.num_rows, size):
                mega = perm[i : i + size]
                mega = mega[np.argsort(-self.lengths[mega], kind="stable")]
                glob += [mega[j : j + self.batch_size].tolist() for j in range(0, len(mega), self.batch_size)]
            glob = [glob[i] for i in rng.permutation(len(glob))]
        while len(glob) < self.per_rank * self.world:
            glob.append(glob[len(glob) % self.num_global])
        return glob[self.rank :: self.world][: self.per_rank]


# =============================================================================================
# Checkpoints: safetensors + JSON
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


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder itself, or the newest complete ``step-*`` folder under ``path``."""
    root = Path(path)
    if (root / STATE_FILE).is_file():
        return root
    if not root.is_dir():
        return None
    steps = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return max(steps, key=lambda p: int(p.name.split("-")[1])) if steps else None


def _prune(root: Path, keep: int) -> None:
    steps = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# =============================================================================================
# The loop
# =============================================================================================


def _resolve_scheme(
    model: MultiExitModel,
    scheme: Scheme | SchemeConfig | str | None,
    loss_fn: LossFn | None,
    forward_kwargs: dict[str, Any] | None,
    learned_exit: LearnedExitConfig | bool | None,
) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    if scheme is None and loss_fn is not None:
        built = _LossFnScheme(model, loss_fn, forward_kwargs)
        if getattr(model.config, "learned_exit", False):
            built.learned = (
                learned_exit if isinstance(learned_exit, LearnedExitConfig) else LearnedExitConfig()
            )
        return built
    built = build_scheme(scheme or "joint", model, learned_exit)
    built.forward_kwargs.update(forward_kwargs or {})
    return built


def _signature(cfg: TrainConfig, n_rows: int, world: int, scheme: Scheme) -> dict[str, Any]:
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
    if cfg.group_by_length:  # only when on, so checkpoints written before the option still resume
        sig["group_by_length"] = True
    return sig


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

    ``scheme``: a name (``joint`` …), a config or a built :class:`Scheme`; or a bare ``loss_fn(output,
    batch, info)`` hook. ``resume``: True continues from the newest checkpoint in the checkpoint folder
    (starting fresh if there is none), a path continues from that checkpoint. Returns the training log
    (per-epoch loss and validation per-exit scores, timing); ``log["stopped"]`` is set when
    ``cfg.stop_after`` ended the run early.
    """
    # Several processes without a GPU (torchrun on CPU): Accelerate only forms a group with cpu=True.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=cfg.cpu or multi_cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if int(os.environ.get("WORLD_SIZE", "1")) != accelerator.num_processes:
        raise RuntimeError(
            f"launched as {os.environ['WORLD_SIZE']} processes but Accelerate formed a group of "
            f"{accelerator.num_processes}: an Accelerator/PartialState was created before train() without "
            "cpu=True; on a machine without a GPU set ACCELERATE_USE_CPU=1 or create none before training"
        )
    set_seed(cfg.seed)
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    built = _resolve_scheme(model, scheme, loss_fn, forward_kwargs, learned_exit)
    stages = built.stages()
    regression = model.is_regression

    base_loader = make_loader(train_data, model.tokenizer, cfg.batch_size, cfg.max_length, shuffle=False)
    rows, collate = base_loader.dataset, base_loader.collate_fn
    lengths = [len(r["input_ids"]) for r in rows.features] if cfg.group_by_length else None
    order = BatchOrder(len(rows), cfg.batch_size, cfg.seed, world, rank, lengths)
    steps_per_epoch = math.ceil(order.per_rank / cfg.grad_accum)
    signature = _signature(cfg, len(rows), world, built)

    ckpt_root: Path | None = None
    if cfg.checkpoint_dir:
        ckpt_root = Path(cfg.checkpoint_dir)
    elif out_dir is not None:
        ckpt_root = Path(out_dir).with_name(Path(out_dir).name + ".checkpoints")
    if (cfg.save_every or resume) and ckpt_root is None and not isinstance(resume, (str, Path)):
        raise ValueError("checkpoints need a folder: give out_dir or TrainConfig.checkpoint_dir")

    # -- where to start -----------------------------------------------------------------------
    pos = {
        "stage": 0,
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "global_step": 0,
        "loss_sum": 0.0,
        "loss_batches": 0,
    }
    log: dict[str, Any] = {
        "config": asdict(cfg),
        "scheme": built.config.to_dict(),
        "stages": [],
        "epochs": [],
    }
    best_score, best_state = -math.inf, None
    elapsed = 0.0
    resume_dir: Path | None = None
    if resume:
        resume_dir = find_checkpoint(resume if isinstance(resume, (str, Path)) else ckpt_root)  # type: ignore[arg-type]
        if resume_dir is None and isinstance(resume, (str, Path)):
            raise FileNotFoundError(f"no checkpoint found at {str(resume)!r}")
    saved: dict[str, Any] | None = None
    if resume_dir is not None:
        saved = json.loads((resume_dir / STATE_FILE).read_text())
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint {str(resume_dir)!r}: format {saved.get('format')}, expected {CHECKPOINT_FORMAT}"
            )
        diff = {
            k: (saved["signature"].get(k), v) for k, v in signature.items() if saved["signature"].get(k) != v
        }
        if diff:
            raise ValueError(
                f"checkpoint {str(resume_dir)!r} was written by a different run; differences "
                f"(checkpoint, now): {diff}"
            )
        pos = dict(saved["position"])
        log = dict(saved["log"])
        best_score = -math.inf if saved["best_score"] is None else float(saved["best_score"])
        if (resume_dir / "best.safetensors").is_file():
            best_state = load_file(str(resume_dir / "best.safetensors"))
        elapsed = float(saved["elapsed"])
        load_model(model, str(resume_dir / "model.safetensors"), strict=True)
        rank_tensors = load_file(str(resume_dir / f"rank-{rank}.safetensors"))
        rank_meta = json.loads((resume_dir / f"rank-{rank}.json").read_text())
        scheme_state = dict(rank_meta["scheme"])
        scheme_state.update(
            {k[len("scheme.") :]: v for k, v in rank_tensors.items() if k.startswith("scheme.")}
        )
        built.load_state_dict(scheme_state)
        if main and cfg.progress:
            tqdm.write(f"resuming from {resume_dir} (step {pos['global_step']})")
    else:
        built.start(cfg.seed, rank)

    start = time.perf_counter() - elapsed
    step_seconds: list[float] = []  # wall time of each optimiser step of this process (not checkpointed)
    info_base = {"regression": regression, "world_size": world}
    with built.attached(model):
        for stage_index in range(pos["stage"], len(stages)):
            stage = stages[stage_index]
            resuming_here = saved is not None and stage_index == saved["position"]["stage"]
            if not resuming_here:
                pos.update(stage=stage_index, epoch=0, batch=0, step=0, loss_sum=0.0, loss_batches=0)
                best_score, best_state = -math.inf, None
            trainable = stage.trainable(model) if stage.trainable is not None else None
            for name, param in model.named_parameters():
                param.requires_grad_(trainable is None or name in trainable)
            stage_epochs = stage.epochs or cfg.epochs
            total_steps = max(1, math.ceil(steps_per_epoch * stage_epochs))
            optimizer = make_optimizer(model, cfg)
            scheduler = get_linear_schedule_with_warmup(
                optimizer, int(cfg.warmup_ratio * total_steps), total_steps
            )
            wrapped, optimizer = accelerator.prepare(model, optimizer)
            if resuming_here:
                opt_tensors = load_file(str(resume_dir / "optimizer.safetensors"))  # type: ignore[operator]
                _load_optimizer_state(optimizer, opt_tensors, saved["optimizer"])  # type: ignore[index]
                scheduler.load_state_dict(saved["scheduler"])  # type: ignore[index]
                _set_rng_state(rank_tensors, rank_meta["rng"])
            if not resuming_here:
                log["stages"].append({"name": stage.name, "total_steps": total_steps})
            select_by = stage.select_by or cfg.select_by
            fwd = {**built.forward_kwargs, **stage.forward_kwargs}
            n_epochs = math.ceil(stage_epochs)
            for epoch in range(pos["epoch"], n_epochs):
                pos["epoch"] = epoch
                model.train()
                batches = order.batches(stage_index, epoch)
                windows = [
                    batches[i : i + cfg.grad_accum] for i in range(pos["batch"], len(batches), cfg.grad_accum)
                ]
                bar = tqdm(
                    total=len(batches),
                    initial=pos["batch"],
                    desc=f"{stage.name} epoch {epoch + 1}/{n_epochs}"
                    if len(stages) > 1
                    else f"epoch {epoch + 1}/{n_epochs}",
                    disable=not (cfg.progress and accelerator.is_local_main_process),
                    leave=False,
                )
                seen, epoch_start = 0, time.perf_counter()
                for window in windows:
                    if pos["step"] >= total_steps:
                        break
                    step_start = time.perf_counter()
                    info = {
                        **info_base,
                        "step": pos["step"],
                        "total_steps": total_steps,
                        "epoch": epoch,
                        "stage": stage.name,
                        "global_step": pos["global_step"],
                    }
                    for i, idx in enumerate(window):
                        batch = {
                            k: v.to(accelerator.device) for k, v in collate([rows[j] for j in idx]).items()
                        }
                        sync = accelerator.no_sync(wrapped) if i < len(window) - 1 else nullcontext()
                        with sync:
                            output = wrapped(**batch, **fwd)
                            loss = stage.loss(output, batch, info)
                            accelerator.backward(loss / len(window))
                        pos["loss_sum"] += float(loss.detach())
                        pos["loss_batches"] += 1
                        seen += len(idx)
                    accelerator.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step_seconds.append(time.perf_counter() - step_start)
                    pos["step"] += 1
                    pos["global_step"] += 1
                    pos["batch"] = min(pos["batch"] + len(window), len(batches))
                    bar.update(len(window))
                    rate = seen * world / max(time.perf_counter() - epoch_start, 1e-9)
                    bar.set_postfix(
                        loss=f"{pos['loss_sum'] / max(pos['loss_batches'], 1):.4f}", ex_per_s=f"{rate:.0f}"
                    )
                    if cfg.save_every and pos["global_step"] % cfg.save_every == 0:
                        _save_checkpoint(
                            accelerator,
                            ckpt_root,
                            cfg,
                            pos,
                            log,
                            signature,
                            best_score,
                            best_state,  # type: ignore[arg-type]
                            time.perf_counter() - start,
                            model,
                            optimizer,
                            scheduler,
                            built,
                        )
                    if cfg.stop_after is not None and pos["global_step"] >= cfg.stop_after:
                        bar.close()
                        log["stopped"] = pos["global_step"]
                        log["train_seconds"] = time.perf_counter() - start
                        log["step_seconds"] = step_seconds
                        model.requires_grad_(True)
                        return log
                bar.close()
                # -- end of epoch: scheme hook, validation, best epoch ----------------------------
                built.on_epoch_end(
                    lambda t: accelerator.gather(t.to(accelerator.device)).cpu() if world > 1 else t
                )
                entry: dict[str, Any] = {
                    "stage": stage.name,
                    "epoch": epoch + 1,
                    "loss": pos["loss_sum"] / max(pos["loss_batches"], 1),
                    "steps": pos["global_step"],
                }
                if val_data is not None and len(val_data):
                    scores = per_exit_scores(model, val_data, cfg.eval_batch_size, cfg.max_length)
                    entry["val"] = scores
                    score = selection_score(scores, select_by)
                    if score > best_score:
                        best_score = score
                        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                        entry["best"] = True
                log["epochs"].append(entry)
                if accelerator.is_local_main_process and cfg.progress:
                    tqdm.write(_epoch_line(entry))
                pos.update(batch=0, loss_sum=0.0, loss_batches=0)
                pos["epoch"] = epoch + 1
            if best_state is not None:
                model.load_state_dict(best_state)
                log["stages"][stage_index]["best_val_score"] = best_score
                log["best_val_score"] = best_score
            saved = None
            pos["stage"] = stage_index + 1
    model.requires_grad_(True)
    log["total_steps"] = sum(s["total_steps"] for s in log["stages"])
    log["train_seconds"] = time.perf_counter() - start
    model.eval()
    if out_dir is not None and main:
        model.config.info["train"] = {k: v for k, v in log.items() if k not in ("epochs",)}
        if built.learned is not None:
            model.config.info["train"]["learned_exit"] = asdict(built.learned)
        path = model.save(out_dir)
        (path / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    accelerator.wait_for_everyone()
    log["step_seconds"] = step_seconds
    return log


def _save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    cfg: TrainConfig,
    pos: dict[str, Any],
    log: dict[str, Any],
    signature: dict[str, Any],
    best_score: float,
    best_state: dict[str, torch.Tensor] | None,
    elapsed: float,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scheme: Scheme,
) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically: each process its RNG + scheme state, the main one the rest."""
    name = f"step-{pos['global_step']:08d}"
    tmp = root / f".{name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    rng_tensors, rng_meta = _rng_state()
    scheme_tensors, scheme_plain = _split_state(scheme.state_dict())
    save_file(
        {**rng_tensors, **{f"scheme.{k}": v for k, v in scheme_tensors.items()}},
        str(tmp / f"rank-{rank}.safetensors"),
    )
    (tmp / f"rank-{rank}.json").write_text(json.dumps({"rng": rng_meta, "scheme": scheme_plain}))
    accelerator.wait_for_everyone()
    final = root / name
    if accelerator.is_main_process:
        save_model(model, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _optimizer_state(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        if best_state is not None:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
        state = {
            "format": CHECKPOINT_FORMAT,
            "position": dict(pos),
            "signature": signature,
            "log": log,
            "best_score": None if best_score == -math.inf else best_score,
            "elapsed": elapsed,
            "optimizer": opt_meta,
            "scheduler": scheduler.state_dict(),
            "train_config": asdict(cfg),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))  # written last: marks the folder complete
        replace_dir(tmp, final)
        _prune(root, cfg.keep_checkpoints)
    accelerator.wait_for_everyone()
    return final


def _epoch_line(entry: dict[str, Any]) -> str:
    line = f"epoch {entry['epoch']}: loss {entry['loss']:.4f}"
    if "val" in entry:
        key = entry["val"][0]["metric"]
        line += f" | val {key} per exit: " + " ".join(f"{s['score']:.3f}" for s in entry["val"])
    return line + (" (best)" if entry.get("best") else "")


# =============================================================================================
# One call from plain arguments (the CLI's entry point)
# =============================================================================================

#: ``factory(exits, **config_kwargs)``: a model with those exits; ``config_kwargs`` are ``ExitConfig``
#: fields build_and_train sets from the data (problem_type, dropout, learned_exit, label_names, task,
#: max_length).
ModelFactory = Callable[..., MultiExitModel]


def build_and_train(
    train_data: TextDataset,
    val_data: TextDataset | None = None,
    out_dir: str | Path | None = None,
    *,
    backbone: str = "minilm-l6",
    scheme: str | SchemeConfig = "joint",
    scheme_options: dict[str, Any] | None = None,
    exits: str | list[int] | None = None,
    head: str = "auto",
    dropout: float = 0.1,
    learned_exit: bool | LearnedExitConfig = False,
    learned_exit_options: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    resume: bool | str | Path = False,
    model_factory: ModelFactory | None = None,
    info: dict[str, Any] | None = None,
    on_model: Callable[[MultiExitModel], None] | None = None,
    **train_options: Any,
) -> tuple[MultiExitModel | CascadeModel, dict[str, Any]]:
    """Build a model for ``train_data``'s task, train it with ``scheme``, save it to ``out_dir``.

    ``scheme``: a registered name (``offramp.losses.list_schemes()``) with ``scheme_options`` (strings
    are converted to the option's type), or a config. ``learned_exit`` adds BERxiT confidence heads
    (``learned_exit_options``: ``loss``, ``detach``, ``weight``). ``train_options`` are
    :class:`TrainConfig` fields (``epochs=1, lr=1e-4, save_every=50, ...``) applied over ``config``.
    ``model_factory(exits, **config_kwargs)`` replaces loading ``backbone`` (tests use tiny random
    models). For ``multi-model`` the exits are the member depths and the result is a
    :class:`CascadeModel`. ``on_model(model)`` is called once a model (each cascade member) is built,
    before it trains (the CLI prints what it is about to train).
    """
    cfg = TrainConfig(**{**(asdict(config) if config else {}), **train_options})
    scheme_cfg = (
        scheme if isinstance(scheme, SchemeConfig) else get_scheme_config(scheme, **(scheme_options or {}))
    )
    learned_cfg: LearnedExitConfig | None = None
    if isinstance(learned_exit, LearnedExitConfig):
        learned_cfg = learned_exit
    elif learned_exit or learned_exit_options:
        learned_cfg = LearnedExitConfig(**(learned_exit_options or {}))
    if train_data.labels is None:
        raise ValueError("training data has no labels")
    model_kwargs = {
        "problem_type": "regression" if train_data.is_regression else "classification",
        "dropout": dropout,
        "learned_exit": learned_cfg is not None,
        "label_names": train_data.label_names,
        "task": train_data.task,
        "max_length": cfg.max_length,
    }

    def make(exit_layers: str | list[int] | None) -> MultiExitModel:
        set_seed(cfg.seed)  # head initialisation is part of the run's seed
        if model_factory is not None:
            return model_factory(exit_layers, **model_kwargs)
        return MultiExitModel.from_backbone(
            backbone, num_labels=train_data.num_labels, exits=exit_layers, head=head, **model_kwargs
        )

    provenance = {
        "scheme": scheme_cfg.to_dict(),
        "train_size": len(train_data),
        "seed": cfg.seed,
        **(info or {}),
    }
    if isinstance(scheme_cfg, MultiModelConfig):
        return _train_cascade(
            train_data,
            val_data,
            out_dir,
            cfg,
            backbone,
            exits,
            head,
            model_kwargs,
            learned_cfg,
            model_factory,
            resume,
            provenance,
            on_model,
        )
    model = make(exits)  # type: ignore[arg-type]  # a spec like "1,3,6" is parsed against the backbone
    model.config.info.update(provenance)
    if on_model is not None:
        on_model(model)
    log = train(
        model, train_data, val_data, cfg, out_dir, scheme=scheme_cfg, learned_exit=learned_cfg, resume=resume
    )
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


def _train_cascade(
    train_data: TextDataset,
    val_data: TextDataset | None,
    out_dir: str | Path | None,
    cfg: TrainConfig,
    backbone: str,
    exits: str | list[int] | None,
    head: str,
    model_kwargs: dict[str, Any],
    learned_cfg: LearnedExitConfig | None,
    factory: ModelFactory | None,
    resume: bool | str | Path,
    provenance: dict[str, Any],
    on_model: Callable[[MultiExitModel], None] | None = None,
) -> tuple[CascadeModel, dict[str, Any]]:
    """SWEET's Multi-Model baseline: one truncated model per depth, each trained alone with CE.

    Finished members are kept in ``<out_dir>.members/`` (and each member's checkpoints in
    ``<checkpoint_dir or out_dir.checkpoints>/member-k``), so a resumed run skips them.
    """
    depths = parse_exits(exits, _num_layers(backbone, factory))
    staging = Path(out_dir).with_name(Path(out_dir).name + ".members") if out_dir is not None else None
    ck_root = (
        Path(cfg.checkpoint_dir)
        if cfg.checkpoint_dir
        else (Path(out_dir).with_name(Path(out_dir).name + ".checkpoints") if out_dir is not None else None)
    )
    members, logs = [], []
    for k, depth in enumerate(depths):
        done = staging / f"member-{k + 1}" if staging is not None else None
        if resume and done is not None and (done / "offramp.json").is_file():
            member = MultiExitModel.load(done)
            logs.append(
                json.loads((done / "train_log.json").read_text())
                if (done / "train_log.json").is_file()
                else {}
            )
            members.append(member)
            continue
        set_seed(cfg.seed)
        if factory is not None:
            member = truncate_backbone(factory([depth], **model_kwargs), depth)
        else:
            member = truncated_member(backbone, train_data.num_labels, depth, head, **model_kwargs)
        member.config.info.update({**provenance, "cascade_member": k + 1})
        if on_model is not None:
            on_model(member)
        member_cfg = TrainConfig(
            **{
                **asdict(cfg),
                "checkpoint_dir": str(ck_root / f"member-{k + 1}") if ck_root is not None else None,
            }
        )
        log = train(
            member,
            train_data,
            val_data,
            member_cfg,
            done,
            scheme="joint",
            learned_exit=learned_cfg,
            resume=resume and ck_root is not None,
        )
        if "stopped" in log:
            return CascadeModel(members + [member]), {"members": logs + [log], "stopped": log["stopped"]}
        logs.append(log)
        members.append(member)
    cascade = CascadeModel(members)
    cascade.config.info.update(provenance)
    log = {"members": logs, "train_seconds": sum(m.get("train_seconds", 0.0) for m in logs)}
    state = PartialState()  # already set up by train()
    if out_dir is not None and state.is_main_process:
        cascade.config.info["train"] = {
            "members": [{k: v for k, v in m.items() if k != "epochs"} for m in logs]
        }
        path = cascade.save(out_dir)
        (path / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    return cascade, log
