"""``offramp train``: fine-tune a multi-exit model and save it as a model folder."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from .args import EPILOG, add_data_args, load_from_args, prepare_out, say
from .images import add_image_args, run_train, wants_images

HELP = "fine-tune a multi-exit model"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help=HELP,
        description="Attach an exit classifier after chosen layers of a pre-trained encoder and fine-tune "
        "all exits together. The GLUE dev split is never touched: a validation split is carved from "
        "train for model selection (and later calibration).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    add_data_args(p)
    m = p.add_argument_group("model")
    m.add_argument(
        "--backbone",
        default="minilm-l6",
        help="hub name, local folder, or 'minilm-l6' (offline all-MiniLM-L6-v2) (default: minilm-l6)",
    )
    m.add_argument("--exits", default="all", help="layers with an exit, e.g. '1,3,6' (default: every layer)")
    m.add_argument(
        "--head",
        default="auto",
        choices=["auto", "cls", "pooler", "mean"],
        help="head input: first token, pooler (dense+tanh on first token) or mean pooling; 'auto' uses the "
        "checkpoint's natural pooling (mean for sentence-transformers, first token otherwise)",
    )
    m.add_argument(
        "--dropout", type=float, default=0.1, help="dropout before each exit classifier (default: 0.1)"
    )
    m.add_argument(
        "--max-length", type=int, default=128, help="tokens per input; longer ones are truncated (128)"
    )
    d = p.add_argument_group("subsets")
    d.add_argument("--train-size", type=int, help="use N training examples (deterministic from --seed)")
    d.add_argument(
        "--val-size",
        type=float,
        help="validation rows carved from train before subsampling: a count, or a fraction < 1 "
        "(default: 10%% of train, at most 1000)",
    )
    add_optimisation_args(p)
    add_scheme_args(p)
    p.add_argument(
        "--out",
        required=True,
        help="output model folder (written atomically; an existing one is refused unless --overwrite)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out folder and all it holds"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_image_args(p, train=True)
    return p


def add_optimisation_args(p: argparse.ArgumentParser) -> None:
    """Optimisation flags; the defaults are the recipe ``offramp train`` uses without tuning flags."""
    t = p.add_argument_group(
        "optimisation",
        "Default recipe: up to 10 epochs at lr 1e-4 with early stopping on the validation split (stop "
        "after 2 validations without a better score; the best weights are kept), so the training length "
        "fits the task without tuning.",
    )
    t.add_argument(
        "--epochs", type=float, default=10.0, help="most training epochs; see --patience (default: 10)"
    )
    t.add_argument(
        "--patience",
        type=int,
        default=2,
        help="early stopping: stop after N validations in a row without a better validation score, "
        "keeping the best weights; 0 trains every epoch (default: 2)",
    )
    t.add_argument(
        "--eval-every",
        type=int,
        metavar="STEPS",
        help="validate every STEPS optimiser steps as well as at each epoch's end (default: each epoch's "
        "end only)",
    )
    t.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    t.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW (default: 1e-4)")
    t.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    t.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps for linear warm-up (0.1)")
    t.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default: 1)")
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default: 1.0)")
    t.add_argument(
        "--group-by-length",
        action="store_true",
        help="batch rows of similar length together (HF group_by_length): less padding, faster steps "
        "on CPU; batch composition changes, not the rows seen per epoch",
    )
    t.add_argument(
        "--seed", type=int, default=42, help="seed for subsets, initialisation and data order (42)"
    )
    t.add_argument(
        "--select-by",
        default="mean",
        choices=["mean", "last"],
        help="keep the epoch with the best validation score, averaged over exits or of the last exit",
    )
    t.add_argument(
        "--select-metric",
        default="score",
        choices=["score", "loss"],
        help="what --select-by and --patience compare on the validation split: the task's metric, or "
        "the loss (lower is better) (default: score)",
    )


def add_scheme_args(p: argparse.ArgumentParser) -> None:
    """Training scheme (offramp.schemes), learned-exit heads and resumable checkpoints (offramp.train)."""
    s = p.add_argument_group("training scheme")
    s.add_argument(
        "--scheme",
        default="joint",
        help="joint (sum of CEs), weighted (PABEE/PCEE eq. 1), beem-kd (CE + KD from the final exit), "
        "sweet (SWEET gradient stop over --base-loss), cosee (SWM + OSC), two-stage (DeeBERT), "
        "multi-model (SWEET's baseline: one truncated model per exit layer, saved as a cascade) "
        "(default: joint)",
    )
    s.add_argument("--base-loss", help="with --scheme sweet: joint, weighted, beem-kd or cosee (joint)")
    s.add_argument(
        "--scheme-opt",
        action="append",
        metavar="KEY=VALUE",
        help="a scheme option, repeatable: weight_by=index|layer (weighted, beem-kd), temperature=1.0 "
        "(beem-kd), signal=norm_energy|norm_entropy|maxprob|..., alpha=0.1, beta0=10, num_thresholds=5, "
        "margin=0.3 (cosee), stage2_epochs=N (two-stage)",
    )
    s.add_argument(
        "--learned-exit",
        action="store_true",
        help="add BERxiT learned-exit heads (per-exit 'is this exit right?', the 'learned' signal)",
    )
    s.add_argument(
        "--learned-exit-loss", choices=["mse", "bce"], default="mse", help="learned-exit loss (default: mse)"
    )
    s.add_argument(
        "--learned-exit-no-detach",
        action="store_true",
        help="let the learned-exit loss reach the backbone (default: the heads see detached inputs)",
    )
    k = p.add_argument_group(
        "distillation from a teacher",
        "Each exit's loss becomes (1 - W) * (scheme loss) + W * T^2 * KL(teacher_T || exit_T) (squared "
        "error to the teacher's output for regression), for any scheme; the teacher's logits are "
        "computed once per training example before training. Unlike beem-kd (the model's own final "
        "exit teaches), the teacher is a separate, already fine-tuned model.",
    )
    k.add_argument(
        "--teacher",
        metavar="DIR",
        help="a fine-tuned model with the same labels: an offramp model folder (its final exit; e.g. a "
        "plain fine-tune trained with --exits 6) or a Hugging Face sequence-classification folder "
        "(safetensors)",
    )
    k.add_argument(
        "--kd-temperature", type=float, default=2.0, help="temperature T of the distillation term (2.0)"
    )
    k.add_argument(
        "--kd-weight", type=float, default=0.5, help="weight W of the distillation term, in [0, 1] (0.5)"
    )
    c = p.add_argument_group("checkpoints")
    c.add_argument("--save-every", type=int, default=0, help="write a resumable checkpoint every N steps (0)")
    c.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint (or the one given); starts fresh when there is none",
    )
    c.add_argument("--checkpoint-dir", help="where checkpoints go (default: OUT.checkpoints next to --out)")
    c.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the checkpoints after a successful run (default: removed, with their size printed)",
    )


def _train_config(args: argparse.Namespace) -> Any:
    from ..train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        seed=args.seed,
        select_by=args.select_by,
        select_metric=args.select_metric,
        progress=not args.no_progress,
        save_every=args.save_every,
        checkpoint_dir=args.checkpoint_dir,
        group_by_length=args.group_by_length,
        eval_every=args.eval_every,
        patience=args.patience or None,
        teacher=args.teacher,
        kd_temperature=args.kd_temperature,
        kd_weight=args.kd_weight,
    )


def data_source(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags as recorded in the model folder, so `calibrate`/`evaluate` can find the data again."""
    keys = ("task", "data_dir", "data_file", "hf_dataset", "hf_config", "label_column")
    source: dict[str, Any] = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    for key in ("data_dir", "data_file"):
        if key in source and Path(source[key]).exists():
            source[key] = str(Path(source[key]).resolve())
    if args.text_columns:
        source["text_columns"] = args.text_columns.split(",")
    if args.regression:
        source["regression"] = True
    return source


def _split(args: argparse.Namespace, full: Any) -> tuple[Any, Any]:
    """Carve the validation rows from train (before subsampling), then subsample the rest."""
    from ..data import subsample, train_val_split

    if args.val_size is not None and not (0 < args.val_size < 1 or float(args.val_size).is_integer()):
        raise ValueError(
            f"--val-size {args.val_size:g}: expected a row count (a whole number) or a fraction in (0, 1)"
        )
    val_size = args.val_size if args.val_size is not None else min(1000, max(1, round(0.1 * len(full))))
    if val_size >= 1:
        val_size = int(val_size)
    train_data, val_data = train_val_split(full, val_size, seed=args.seed) if val_size else (full, None)
    if args.train_size is not None:
        if args.train_size < 1:
            raise ValueError(f"--train-size {args.train_size}: expected a positive count")
        train_data = subsample(train_data, args.train_size, seed=args.seed)
    return train_data, val_data


def _drop_checkpoints(args: argparse.Namespace, cfg: Any) -> None:
    """Remove the run's checkpoints after success (unless --keep-checkpoints), saying how much either way."""
    from ..io import human_size, tree_size
    from ..train import checkpoint_root

    folder = checkpoint_root(cfg, args.out)
    if folder is None or not folder.is_dir():
        return
    size = human_size(tree_size(folder))
    if args.keep_checkpoints:
        say(f"checkpoints kept in {folder} ({size}); delete them when you no longer need to resume")
        return
    shutil.rmtree(folder, ignore_errors=True)
    say(f"removed the run's checkpoints in {folder} ({size}; --keep-checkpoints keeps them)")


def run(args: argparse.Namespace) -> int:
    """Implementation of ``offramp train``."""
    from ..io import folder_lock
    from ..schemes import parse_options
    from ..train import RunSpec, build_and_train

    cfg = _train_config(args)
    prepare_out(args)
    if wants_images(args):
        return run_train(args)
    full = load_from_args(args, "train")
    if full.labels is None:
        raise ValueError(f"the training data from {full.source or args.task!r} has no labels")
    train_data, val_data = _split(args, full)
    if val_data is None and cfg.patience is not None:
        say("no validation split (--val-size 0): early stopping is off, training runs every epoch")
        cfg = replace(cfg, patience=None)
    options = parse_options(args.scheme_opt)
    if args.base_loss:
        options["base_loss"] = args.base_loss
    learned = {"loss": args.learned_exit_loss, "detach": not args.learned_exit_no_detach}
    info = {"train_size": len(train_data), "val_size": len(val_data) if val_data else 0, "seed": args.seed,
            "data": data_source(args)}  # fmt: skip

    def announce(model: Any) -> None:
        say(
            f"training {args.backbone} ({args.scheme}) with exits after layers {model.exits} "
            f"({model.config.head} heads) on {len(train_data)} examples; "
            f"{len(val_data) if val_data else 0} held out for validation"
        )

    spec = RunSpec(
        backbone=args.backbone,
        scheme=args.scheme,
        scheme_options=options,
        exits=args.exits,
        head=args.head,
        dropout=args.dropout,
        learned_exit=args.learned_exit,
        learned_exit_options=learned if args.learned_exit else None,
        info=info,
    )
    with folder_lock(args.out):
        _model, log = build_and_train(
            train_data, val_data, args.out, spec, cfg, resume=args.resume, on_model=announce
        )
    say(f"saved to {args.out} in {log['train_seconds']:.1f} s")
    _drop_checkpoints(args, cfg)
    return 0
