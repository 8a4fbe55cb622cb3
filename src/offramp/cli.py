"""The ``offramp`` command: train, evaluate, and (from their own modules) predict, calibrate, bench."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

EPILOG = """examples:
  offramp train --task sst2 --data-dir ../shared/data/glue --backbone minilm-l6 \\
      --train-size 2000 --epochs 1 --out runs/sst2
  offramp evaluate runs/sst2 --task sst2 --data-dir ../shared/data/glue

Set OFFRAMP_DEBUG=1 to see full tracebacks instead of one-line errors."""


# ---------------------------------------------------------------------------------------------
# shared argument groups
# ---------------------------------------------------------------------------------------------
def add_data_args(parser: argparse.ArgumentParser, split_default: str | None = None) -> None:
    """Where examples come from: a GLUE task folder, a CSV/TSV/JSONL file, or a `datasets` name."""
    g = parser.add_argument_group("data (a GLUE task, a file, or a Hugging Face dataset)")
    g.add_argument("--task", help="GLUE task: cola sst2 mrpc stsb qqp mnli mnli-mm qnli rte wnli")
    g.add_argument(
        "--data-dir",
        help="GLUE root holding <TASK>/{train,dev}.tsv (default: $OFFRAMP_GLUE_DIR or ../shared/data/glue)",
    )
    g.add_argument(
        "--data-file", help="a .csv/.tsv/.jsonl file (or a saved `datasets` folder) instead of GLUE"
    )
    g.add_argument("--hf-dataset", help="a Hugging Face `datasets` name (needs network or a local cache)")
    g.add_argument("--hf-config", help="the `datasets` configuration name, e.g. 'sst2' for 'glue'")
    g.add_argument(
        "--text-columns", help="comma-separated text column(s) for --data-file/--hf-dataset, e.g. 'a,b'"
    )
    g.add_argument("--label-column", help="label column for --data-file/--hf-dataset (default: label)")
    g.add_argument("--regression", action="store_true", help="labels are real numbers (like STS-B)")
    if split_default is not None:
        g.add_argument("--split", default=split_default, help=f"split to use (default: {split_default})")


def load_from_args(args: argparse.Namespace, split: str) -> Any:
    from .data import load_data

    columns = args.text_columns.split(",") if args.text_columns else None
    return load_data(
        task=args.task,
        split=split,
        data_dir=args.data_dir,
        path=args.data_file,
        hf_name=args.hf_dataset,
        hf_config=args.hf_config,
        text_columns=columns,
        label_column=args.label_column,
        regression=True if args.regression else None,
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: Any = None) -> None:
    """A plain aligned text table."""
    out = out or sys.stdout
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)), file=out)
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def add_train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a multi-exit model",
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
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=float, default=3.0, help="training epochs (default: 3)")
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
    add_scheme_args(p)
    p.add_argument("--out", required=True, help="output model folder (written atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


def add_scheme_args(p: argparse.ArgumentParser) -> None:
    """Training scheme (offramp.losses), learned-exit heads and resumable checkpoints (offramp.train)."""
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


def run_train(args: argparse.Namespace) -> int:
    from .data import DataError, subsample, train_val_split
    from .losses import parse_options
    from .train import TrainConfig, build_and_train

    cfg = TrainConfig(
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
        progress=not args.no_progress,
        save_every=args.save_every,
        checkpoint_dir=args.checkpoint_dir,
        group_by_length=args.group_by_length,
    )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} exists and is not a folder")
    full = load_from_args(args, "train")
    if full.labels is None:
        raise DataError(f"the training data from {full.source or args.task!r} has no labels")
    val_size = args.val_size if args.val_size is not None else min(1000, max(1, round(0.1 * len(full))))
    if val_size and val_size >= 1:
        val_size = int(val_size)
    train_data, val_data = train_val_split(full, val_size, seed=args.seed) if val_size else (full, None)
    if args.train_size is not None:
        if args.train_size < 1:
            raise DataError(f"--train-size {args.train_size}: expected a positive count")
        train_data = subsample(train_data, args.train_size, seed=args.seed)
    options = parse_options(args.scheme_opt)
    if args.base_loss:
        options["base_loss"] = args.base_loss
    learned = {"loss": args.learned_exit_loss, "detach": not args.learned_exit_no_detach}

    def announce(model: Any) -> None:
        print(
            f"training {args.backbone} ({args.scheme}) with exits after layers {model.exits} "
            f"({model.config.head} heads) on {len(train_data)} examples; "
            f"{len(val_data) if val_data else 0} held out for validation",
            file=sys.stderr,
        )

    model, log = build_and_train(
        train_data,
        val_data,
        args.out,
        backbone=args.backbone,
        scheme=args.scheme,
        scheme_options=options,
        exits=args.exits,
        head=args.head,
        dropout=args.dropout,
        learned_exit=args.learned_exit,
        learned_exit_options=learned if args.learned_exit else None,
        config=cfg,
        resume=args.resume,
        info={"train_size": len(train_data), "val_size": len(val_data) if val_data else 0, "seed": args.seed},
        on_model=announce,
    )
    print(f"saved to {args.out} in {log['train_seconds']:.1f} s", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
def add_evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score every exit of a trained model on a split",
        description="Run the model once over a split, score every exit, print a table and write it as JSON "
        "(fields: see the README).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("model_dir", help="a folder written by `offramp train`")
    add_data_args(p, split_default="dev")
    p.add_argument("--batch-size", type=int, default=128, help="evaluation batch size (default: 128)")
    p.add_argument("--json", help="where to write the scores (default: MODEL_DIR/eval_<task>_<split>.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--policies",
        help="comma-separated policies to sweep, wildcards ok, e.g. 'maxprob,pcee*' (default: all that "
        "apply)",
    )
    p.add_argument("--grid-size", type=int, default=100, help="settings per policy sweep (default: 100)")
    p.add_argument("--report", metavar="DIR", help="also write a Markdown report with plots into DIR")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the exit outputs instead of reusing MODEL_DIR/exit_outputs_<task>_<split>.npz",
    )
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from .cascade import CascadeModel, load_any
    from .evaluate import ExitOutputs, collect_exit_outputs, outputs_fingerprint, scores_from_outputs
    from .report import evaluate_policies, write_report

    model = load_any(args.model_dir)
    if args.task is None and args.data_file is None and args.hf_dataset is None:
        args.task = model.config.task
    data = load_from_args(args, args.split)
    _check_labels_match(model, data)
    cache = Path(args.model_dir) / f"exit_outputs_{data.task or model.config.task or 'data'}_{args.split}.npz"
    start = time.perf_counter()
    fingerprint = outputs_fingerprint(args.model_dir, data, model.config.max_length)
    cached = False
    if cache.is_file() and not args.no_cache:
        outputs = ExitOutputs.load(str(cache))
        cached = outputs.fingerprint == fingerprint
        if not cached:
            print(f"{cache.name} was computed from other data or weights: recomputing it", file=sys.stderr)
    if not cached:
        outputs = collect_exit_outputs(model, data, args.batch_size, progress=not args.no_progress)
        outputs.fingerprint = fingerprint
        tmp_cache = cache.with_name(f".{cache.stem}.tmp-{os.getpid()}.npz")
        outputs.save(str(tmp_cache))
        os.replace(tmp_cache, cache)
    seconds = time.perf_counter() - start
    rows = scores_from_outputs(outputs, data.task or model.config.task, model.is_regression)
    patterns = [x.strip() for x in args.policies.split(",") if x.strip()] if args.policies else None
    result = evaluate_policies(
        outputs,
        data.task or model.config.task,
        model.is_regression,
        policies=patterns,
        grid_size=args.grid_size,
        multi_model=isinstance(model, CascadeModel),
        calibrated_policy=model.config.policy,
    )
    report = {
        "model_dir": str(args.model_dir),
        "task": data.task or model.config.task,
        "split": args.split,
        "examples": len(data),
        "metric": rows[0]["metric"],
        "exits": rows,
        "final": rows[-1],
        "seconds": seconds,
        "cached_outputs": cached,
        "policies": result["policies"],
        "analysis": result["analysis"],
        "calibrated": result["calibrated"],
        "targets": result["targets"],
        "multi_model": result["multi_model"],
    }
    metric_names = list(rows[0]["metrics"])
    print_table(
        ["exit", "layer", *metric_names], [[r["exit"], r["layer"], *r["metrics"].values()] for r in rows]
    )
    keys = [f"{t:g}" for t in result["targets"]]
    print()
    print_table(
        ["policy", *[f"@{k}x" for k in keys], "AUC 1-3x"],
        [
            [n, *[_fmt_opt(p["at_speedup"][k]) for k in keys], _fmt_opt(p["auc"])]
            for n, p in result["policies"].items()
        ],
    )
    name = f"eval_{report['task'] or 'data'}_{args.split}.json"
    out = Path(args.json) if args.json else Path(args.model_dir) / name
    write_json_atomic(out, report)
    if args.report:
        title = f"{Path(args.model_dir).name}: {report['task'] or 'data'} {args.split}"
        write_report(result, args.report, title)
        print(f"report written to {Path(args.report) / 'report.md'}", file=sys.stderr)
    print(f"{len(data)} examples in {seconds:.1f} s; scores written to {out}", file=sys.stderr)
    return 0


def _fmt_opt(value: float | None) -> str:
    """A score, or '-' where it is undefined (null in the JSON)."""
    return "-" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------
def add_compare_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="aggregate evaluate results over seeds and compare configurations",
        description="Read evaluate JSONs (or model folders holding one eval_<task>_<split>.json), group "
        "runs that differ only in seed, and give mean ± 95%% interval of each policy's score at each "
        "target speed-up.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_OR_JSON", help="evaluate JSONs or model folders")
    p.add_argument("--report", metavar="DIR", help="write a Markdown report with an overlay plot into DIR")
    p.add_argument("--json", help="write the aggregate as JSON here")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from .report import compare_runs, load_run, write_compare_report

    result = compare_runs([load_run(r) for r in args.runs])
    for conf in result["configurations"]:
        print(f"{conf['label']}  ({len(conf['runs'])} runs, seeds {conf['seeds']})")
        keys = [f"{t:g}" for t in conf["targets"]]
        rows = []
        for name, p in conf["policies"].items():
            cells = [p["at_speedup"][k] for k in keys] + [p["auc"]]
            rows.append([name, *[f"{_fmt_opt(c['mean'])} ± {_fmt_opt(c['half'])}" for c in cells]])
        print_table(["policy", *[f"@{k}x" for k in keys], "AUC 1-3x"], rows)
        print()
    if args.json:
        write_json_atomic(Path(args.json), result)
    if args.report:
        write_compare_report(result, args.report)
        print(f"report written to {Path(args.report) / 'report.md'}", file=sys.stderr)
    return 0


def _check_labels_match(model: Any, data: Any) -> None:
    if data.labels is None:
        raise ValueError(f"split from {data.source!r} has no labels to score against")
    if model.is_regression != data.is_regression:
        kind = "regression" if model.is_regression else "classification"
        raise ValueError(f"the model does {kind} but the data from {data.source!r} does not")
    names = model.config.label_names
    same_names = names is None or data.label_names is None or list(data.label_names) == list(names)
    if not model.is_regression and (data.num_labels != model.config.num_labels or not same_names):
        raise ValueError(
            f"the data has {data.num_labels} labels {data.label_names} but the model was trained for "
            f"{model.config.num_labels} {model.config.label_names}"
        )


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file so a failure never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# gradients (SWEET §3.1)
# ---------------------------------------------------------------------------------------------
def add_gradients_parser(sub: Any) -> None:
    p = sub.add_parser(
        "gradients",
        help="measure conflicting gradients between exits (SWEET §3.1)",
        description="For each layer that precedes an exit, the mean row-cosine similarity between the "
        "gradients that different classifiers send to the layer's last feed-forward matrix, on one "
        "training batch. Near 0: the classifiers pull the shared weights in unrelated directions. Works "
        "on a trained model folder or a fresh backbone (--backbone, --exits).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  offramp gradients --exits 1,4,6 --task sst2 --plot grads.png",
    )
    p.add_argument("model_dir", nargs="?", help="a trained model folder (omit to use a fresh --backbone)")
    p.add_argument(
        "--backbone", default="minilm-l6", help="fresh backbone when no MODEL_DIR (default: minilm-l6)"
    )
    p.add_argument("--exits", default="all", help="exit layers of the fresh model (default: every layer)")
    add_data_args(p, split_default="train")
    p.add_argument("--batch-size", type=int, default=16, help="examples in the batch (SWEET: 16)")
    p.add_argument("--seed", type=int, default=0, help="which examples, and dropout (default: 0)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per input (default: 128)")
    p.add_argument("--json", help="write the similarities as JSON here")
    p.add_argument("--plot", help="write heatmaps (PNG) here")
    p.set_defaults(func=run_gradients)


def run_gradients(args: argparse.Namespace) -> int:
    from .data import make_loader, subsample
    from .gradients import conflicting_gradients, plot_similarities
    from .model import MultiExitModel

    if args.model_dir:
        model = MultiExitModel.load(args.model_dir)
        args.task = args.task or model.config.task
    else:
        data = load_from_args(args, args.split)
        model = MultiExitModel.from_backbone(
            args.backbone,
            data.num_labels,
            exits=args.exits,
            problem_type="regression" if data.is_regression else "classification",
        )
    data = load_from_args(args, args.split)
    if args.batch_size < 2:
        raise ValueError(f"--batch-size {args.batch_size}: expected at least 2 examples")
    batch = next(
        iter(
            make_loader(
                subsample(data, args.batch_size, args.seed), model.tokenizer, args.batch_size, args.max_length
            )
        )
    )
    results = conflicting_gradients(model, batch, seed=args.seed)
    for res in results:
        print(f"layer {res.layer} (updated by classifiers {', '.join(f'C-{c}' for c in res.classifiers)})")
        names = [f"C-{c}" for c in res.classifiers]
        print_table(["", *names], [[n, *row] for n, row in zip(names, res.similarity, strict=True)])
        print()
    if args.json:
        write_json_atomic(Path(args.json), {"exits": model.exits, "layers": [r.to_dict() for r in results]})
    if args.plot:
        plot_similarities(results, args.plot, title=f"conflicting gradients, exits {model.exits}")
        print(f"heatmaps written to {args.plot}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
#: Commands whose modules import torch: (module, parser builder, one-line help). Their full parsers
#: are built only when that command runs, so `offramp --help` and the other commands start fast.
HEAVY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "predict": ("engine", "add_predict_parser", "label texts with early exit (JSONL out)"),
    "calibrate": (
        "calibrate",
        "add_calibrate_parser",
        "choose an exit threshold on a validation split and save it with the model",
    ),
    "bench": (
        "bench",
        "add_bench_parser",
        "measure wall-clock speed-up of early exit against the full model",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``offramp`` parser; a heavy command's own options are added only when ``command`` names it."""
    parser = argparse.ArgumentParser(
        prog="offramp",
        description="Early-exit transformer classifiers: attach exits to a pre-trained encoder, fine-tune "
        "them, let easy inputs leave early, and measure the real speed-up.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"offramp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_compare_parser(sub)
    add_gradients_parser(sub)
    for name, (module, builder, help_text) in HEAVY_COMMANDS.items():
        if name == command:
            getattr(importlib.import_module(f".{module}", __package__), builder)(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word not starting with '-'), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("offramp: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:
        if os.environ.get("OFFRAMP_DEBUG"):
            raise
        print(f"offramp {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    """Hide transformers' weight-loading bars and advisory logs; offramp prints its own progress.

    Warnings (e.g. how many inputs were truncated) print as one line each.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.formatwarning = lambda message, category, *_: f"offramp: warning: {message}\n"

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
