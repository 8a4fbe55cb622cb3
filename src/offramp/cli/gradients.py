"""``offramp gradients``: conflicting gradients between exits on one batch (SWEET §3.1)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .args import add_data_args, default_task, load_from_args, print_table, say

HELP = "measure conflicting gradients between exits (SWEET §3.1)"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "gradients",
        help=HELP,
        description="For each layer that precedes an exit, the mean row-cosine similarity between the "
        "gradients that different classifiers send to the layer's last feed-forward matrix, on one "
        "training batch. Near 0: the classifiers pull the shared weights in unrelated directions. Works "
        "on a trained model folder or a fresh backbone (--backbone, --exits).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  offramp gradients --exits 1,4,6 --task sst2 --plot runs/grads.png",
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
    return p


def run(args: argparse.Namespace) -> int:
    """Implementation of ``offramp gradients``."""
    from ..data import make_loader, subsample
    from ..gradients import conflicting_gradients, plot_similarities
    from ..io import write_json_atomic
    from ..model import MultiExitModel

    if args.model_dir:
        model = MultiExitModel.load(args.model_dir)
        default_task(args, model)
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
        write_json_atomic(args.json, {"exits": model.exits, "layers": [r.to_dict() for r in results]})
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_similarities(results, args.plot, title=f"conflicting gradients, exits {model.exits}")
        say(f"heatmaps written to {args.plot}")
    return 0
