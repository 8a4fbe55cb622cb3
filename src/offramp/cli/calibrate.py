"""``offramp calibrate``: choose an exit threshold on a validation split and save it with the model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .args import (
    add_data_args,
    add_policy_args,
    add_quantize_arg,
    check_quantize_arg,
    has_data_source,
    load_from_args,
    maybe_quantize,
    policy_from_args,
    say,
)
from .images import add_image_args, calibration_data

HELP = "choose an exit threshold on a validation split and save it with the model"

#: Keys of the data source a model folder records (``config.info["data"]``) -> the flag's attribute.
_RECORDED = {
    "task": "task",
    "data_dir": "data_dir",
    "data_file": "data_file",
    "hf_dataset": "hf_dataset",
    "hf_config": "hf_config",
    "text_columns": "text_columns",
    "label_column": "label_column",
    "regression": "regression",
}

_NO_SOURCE = (
    "this model folder records no data source; pass one: --task NAME [--data-dir DIR], or --data-file FILE "
    "--text-columns A[,B] [--label-column L] (with --split NAME, or --val-size N --seed S for the rows it "
    "held out), or --unlabeled FILE with --target-speedup X"
)


def _epilog() -> str:
    """Goals, the policy list (imports the registry, so built only when this command runs) and examples."""
    from ..policies import describe_policies

    return (
        "goals:\n"
        "  --target-speedup X  slowest setting with layer-count speed-up L*N/sum(l(n)) >= X\n"
        "                      (COSEE eq. 12); with --unlabeled FILE, measured on texts without labels\n"
        "  --rule beem         smallest threshold whose error on the inputs that exit early is no\n"
        "                      higher than the final exit's error on those inputs (BEEM);\n"
        "                      --per-exit: one alpha per exit\n"
        "  --max-drop D        fastest setting within D points (0.5 = half a point) of the final\n"
        "                      exit's score\n"
        "  --max-drop D --confidence C\n"
        "                      fastest setting whose accuracy loss against the final exit is at most\n"
        "                      D points with probability >= C (Learn-then-Test, fixed-sequence testing\n"
        "                      from the slowest setting; the final exit when none is certified)\n\n"
        "exit policies (--policy NAME; [axis] is the threshold being calibrated):\n"
        + describe_policies()
        + "\n\nWithout --policy the model's saved policy is calibrated again, else maxprob.\n\n"
        "examples:\n"
        "  offramp calibrate runs/sst2 --target-speedup 2.0 --policy entropy\n"
        "  offramp calibrate runs/sst2 --rule beem --policy beem-a --per-exit\n"
        "  offramp calibrate runs/sst2 --target-speedup 2.0 --unlabeled traffic.txt\n"
        "  offramp calibrate runs/sst2 --max-drop 1.0 --confidence 0.95"
    )


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate",
        help=HELP,
        description="Run the model once over a validation split (by default the part of its training data "
        "that `offramp train` held out, found from what the model folder records; never the GLUE dev "
        "split, which is the evaluation split), simulate the policy over a grid of thresholds, pick one by "
        "the chosen goal and save it in the model folder; `offramp predict` and `offramp bench` then use it "
        "by default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(),
    )
    p.add_argument("model_dir", help="a folder written by `offramp train`")
    add_data_args(p)
    add_image_args(p)
    p.add_argument(
        "--split",
        help="validation split to calibrate on (default: the rows of train that `offramp train` held out, "
        "found from the val_size/seed it recorded; with --data-file of another file, the whole file)",
    )
    p.add_argument(
        "--val-size", type=float, help="rows carved from train as validation (default: as recorded)"
    )
    p.add_argument("--seed", type=int, help="seed of that carve (default: as recorded)")
    p.add_argument(
        "--unlabeled",
        metavar="FILE",
        help="calibrate --target-speedup on texts without labels: one per line, or 'text1<TAB>text2' for "
        "pair tasks ('-' = stdin); no score is recorded",
    )
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-speedup", type=float, metavar="X", help="layer-count speed-up to reach, e.g. 2.0"
    )
    goal.add_argument("--rule", choices=["beem"], help="BEEM's threshold rule")
    goal.add_argument(
        "--max-drop",
        type=float,
        metavar="D",
        help="allowed drop in points from the final exit; alone it holds on the validation rows only (about "
        "half of new samples drop more, benchmarks/results/risk_coverage.md): add --confidence 0.95",
    )
    p.add_argument(
        "--confidence",
        type=float,
        metavar="C",
        help="with --max-drop: guarantee the drop (in accuracy, against the final exit) with probability "
        ">= C, e.g. 0.95, by Learn-then-Test on the validation split",
    )
    p.add_argument(
        "--risk-test",
        choices=["binomial", "hoeffding-bentkus"],
        default="binomial",
        help="p-values of the guarantee: exact binomial tail (default; the loss is 0/1) or Hoeffding-Bentkus",
    )
    add_policy_args(p)
    add_quantize_arg(
        p,
        "calibrate on the outputs of the model quantized this way and save the policy for "
        "that runtime only (used by predict/evaluate/bench/serve with the same --quantize)",
    )
    p.add_argument(
        "--per-exit", action="store_true", help="one alpha per exit (with --rule beem, BEEM policies)"
    )
    p.add_argument(
        "--temperature-scaling", action="store_true", help="fit one temperature per exit (NLL) first"
    )
    p.add_argument(
        "--compare",
        choices=["same-inputs", "overall"],
        default="same-inputs",
        help="BEEM rule reference: the final exit's error on the early-exited inputs (default) or on all",
    )
    p.add_argument("--batch-size", type=int, default=64, help="batch size for the validation pass (64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over the validation pass")
    p.add_argument("--dry-run", action="store_true", help="print the result, do not save it")
    return p


# ---------------------------------------------------------------------------------------------------------
# Which data
# ---------------------------------------------------------------------------------------------------------


def recorded_source(model: Any) -> dict[str, Any] | None:
    """The data source the model folder records (``config.info["data"]``), or None."""
    data = (getattr(model.config, "info", None) or {}).get("data")
    return data if isinstance(data, dict) and data else None


def use_recorded_source(args: argparse.Namespace, recorded: dict[str, Any]) -> None:
    """Fill the data flags not given from a recorded source (text columns as 'a,b', like the flag)."""
    for key, attr in _RECORDED.items():
        value = recorded.get(key)
        if value is None or getattr(args, attr, None) not in (None, False):  # a flag given wins
            continue
        if key == "text_columns" and not isinstance(value, str):
            value = ",".join(value)
        setattr(args, attr, value)


def same_source(args: argparse.Namespace, recorded: dict[str, Any] | None) -> bool:
    """Whether the file or `datasets` name on the command line is the one the model was trained on."""
    if not recorded:
        return False
    if args.data_file is not None and recorded.get("data_file"):
        return _same_path(args.data_file, recorded["data_file"])
    if args.hf_dataset is not None and recorded.get("hf_dataset"):
        return (args.hf_dataset, args.hf_config) == (recorded["hf_dataset"], recorded.get("hf_config"))
    return False


def _same_path(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    try:
        return pa.samefile(pb)
    except OSError:
        return pa.resolve() == pb.resolve()


def validation_data(args: argparse.Namespace, model: Any) -> tuple[Any, str]:
    """The validation split named on the command line, or the one `offramp train` held out."""
    recorded = recorded_source(model)
    from_flags = has_data_source(args)
    if not from_flags:
        if recorded:
            use_recorded_source(args, recorded)
        elif getattr(model.config, "task", None):
            args.task = model.config.task
        else:
            raise ValueError(_NO_SOURCE)
    if args.split is not None and args.split != "train":
        if args.split in ("dev", "validation", "test"):
            say(
                f"offramp calibrate: warning: calibrating on the {args.split!r} split; if you also evaluate "
                "on it, the reported scores will be optimistic"
            )
        return load_from_args(args, args.split), args.split
    trained_on_it = not from_flags or same_source(args, recorded)
    if args.split is None and args.val_size is None and not trained_on_it:
        if args.data_file is not None:  # another file named explicitly is the validation data
            return load_from_args(args, "train"), f"file {args.data_file}"
        if args.hf_dataset is not None:
            raise ValueError("--hf-dataset needs --split NAME (a validation split, never the evaluation one)")
    return held_out(args, model)


def held_out(args: argparse.Namespace, model: Any) -> tuple[Any, str]:
    """The rows of the training data that `offramp train` held out (or --val-size/--seed's carve)."""
    from ..data import train_val_split

    info = getattr(model.config, "info", None) or {}
    val_size = args.val_size if args.val_size is not None else info.get("val_size")
    seed = args.seed if args.seed is not None else info.get("seed")
    if not val_size or seed is None:
        raise ValueError(
            "this model folder records no held-out validation split (info.val_size/seed); pass --split NAME "
            "or --val-size N --seed S (never the split you evaluate on)"
        )
    full = load_from_args(args, "train")
    _, val = train_val_split(full, _val_size(val_size), seed=int(seed))
    name = f"file {args.data_file}" if args.data_file else "train"
    return val, f"{name}[held-out {len(val)} rows, seed {seed}]"


def _val_size(value: float) -> int | float:
    """A row count (whole number >= 1) or a fraction in (0, 1), as --val-size takes it."""
    value = float(value)
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise ValueError(
        f"--val-size {value:g}: expected a row count (a whole number >= 1) or a fraction in (0, 1)"
    )


def unlabeled_data(args: argparse.Namespace, model: Any) -> tuple[Any, str]:
    """The texts of ``--unlabeled FILE`` as a dataset without labels, read as `offramp predict` reads them."""
    from ..data import TextDataset
    from .predict import is_pair_task, read_inputs

    flags = {"--data-file": args.data_file, "--hf-dataset": args.hf_dataset, "--split": args.split}
    clash = [flag for flag, value in {**flags, "--val-size": args.val_size}.items() if value is not None]
    if clash:
        raise ValueError(f"--unlabeled FILE is the calibration data; drop {' and '.join(clash)}")
    texts, _ = read_inputs(args.unlabeled, is_pair_task(model))
    rows = [tuple(t) if isinstance(t, (tuple, list)) else (t,) for t in texts]
    source = "stdin" if args.unlabeled == "-" else args.unlabeled
    data = TextDataset(rows, None, model.config.label_names, args.task or model.config.task, source=source)
    return data, f"file {source} (unlabeled)"


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------


def check_goal_flags(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work, refused before the model loads."""
    if args.confidence is not None:
        from ..calibrate import check_guarantee_goal

        if args.max_drop is None:
            raise ValueError("--confidence C goes with --max-drop D (the guarantee bounds the accuracy drop)")
        check_guarantee_goal(args.max_drop, args.confidence, args.risk_test)
    if args.unlabeled is None:
        return
    if args.target_speedup is None:
        goal = "--rule beem" if args.rule else "--max-drop"
        raise ValueError(
            f"{goal} needs labels (it compares errors or scores with the final exit's); with "
            "--unlabeled FILE use --target-speedup X"
        )
    for flag, on in (("--temperature-scaling", args.temperature_scaling), ("--per-exit", args.per_exit)):
        if on:
            raise ValueError(f"{flag} fits to labels; --unlabeled FILE has none")


def chosen_policy(args: argparse.Namespace, model: Any) -> Any:
    """``--policy`` (with ``--param``), else the model's saved policy, else maxprob.

    A saved policy's temperatures are dropped (``--temperature-scaling`` fits new ones) and BEEM-A's weights
    are measured again on a labelled split.
    """
    import dataclasses

    from ..policies import get_policy, policy_from_config

    policy = policy_from_args(args)
    if policy is not None:
        return policy
    saved = getattr(model.config, "policy", None)
    if not saved:
        return get_policy("maxprob")
    changes: dict[str, Any] = {"temperatures": None}
    refit = (saved.get("calibration") or {}).get("weights_from") and args.unlabeled is None
    if refit:  # BEEM-A: measure its weights on this split again (without labels, keep the saved ones)
        changes["weights"] = "accuracy"
    return dataclasses.replace(policy_from_config(saved), **changes)


def goal_text(args: argparse.Namespace) -> str:
    if args.target_speedup is not None:
        return f"a {args.target_speedup:g}x layer-count speed-up"
    if args.max_drop is not None and args.confidence is not None:
        return (
            f"an accuracy loss of at most {args.max_drop:g} points against the final exit with probability "
            f">= {args.confidence:g} (Learn-then-Test, {args.risk_test} p-values)"
        )
    if args.max_drop is not None:
        return f"at most {args.max_drop:g} points below the final exit"
    return f"BEEM's rule ({args.compare}{', one alpha per exit' if args.per_exit else ''})"


def run(args: argparse.Namespace) -> int:
    """Implementation of ``offramp calibrate``."""
    from ..calibrate import calibrate_model, save_policy
    from ..cascade import load_any
    from ..checks import check_data_matches

    check_goal_flags(args)
    check_quantize_arg(args)
    model = maybe_quantize(load_any(args.model_dir), args)
    policy = chosen_policy(args, model)
    images = calibration_data(args, model)  # None for text models
    data, split = images or (unlabeled_data(args, model) if args.unlabeled else validation_data(args, model))
    if data.labels is None and not args.unlabeled:
        raise ValueError(
            f"the calibration split {split!r} has no labels; a speed-up goal can use --unlabeled FILE"
        )
    check_data_matches(model, data, need_labels=not args.unlabeled)
    params = {k: v for k, v in policy.params().items() if k != policy.axis}
    say(
        f"calibrating policy {policy.kind!r} {json.dumps(params)} (choosing {policy.axis}) for "
        f"{goal_text(args)} on {split}, {len(data)} rows"
    )
    result = calibrate_model(
        model,
        data,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        policy=policy,
        target_speedup=args.target_speedup,
        rule=args.rule,
        max_drop=args.max_drop,
        per_exit=args.per_exit,
        temperature_scaling=args.temperature_scaling,
        compare=args.compare.replace("-", "_"),
        split=split,
        unlabeled=args.unlabeled is not None,
        confidence=args.confidence,
        risk_test=args.risk_test,
    )
    say(summary_line(result))
    if result.rule == "risk":
        say(guarantee_line(result))
    if args.dry_run:
        print(json.dumps(result.to_config(), indent=2))
    else:
        runtime = args.quantize
        where = save_policy(args.model_dir, result, runtime=runtime)
        say(f"saved as the default policy{f' of --quantize {runtime}' if runtime else ''} in {where}")
    return 0


def summary_line(result: Any) -> str:
    """``threshold {...}: speed-up 2.00x (50% layers saved), accuracy 0.9 vs final exit 0.91 on SPLIT``."""
    speed = f"speed-up {result.speedup:.2f}x ({100 * result.speed['saved_layers']:.0f}% layers saved)"
    if result.score is None:
        scored = "no labels, no score"
    else:
        scored = f"{result.metric} {result.score:.4f} vs final exit {result.final_score:.4f}"
    config = result.policy.to_config()
    return f"{config['name']} {json.dumps(config['params'])}: {speed}, {scored} on {result.split}"


def guarantee_line(result: Any) -> str:
    """What Learn-then-Test certified (or that it certified nothing and the final exit is kept)."""
    info = result.details
    drop, level = info["max_drop"], info["confidence"]
    unit = "point" if drop == 1 else "points"
    goal = f"an accuracy drop of at most {drop:g} {unit} with probability >= {level:g}"
    tests = f"{info['tested']} of {info['grid_size']} settings tested, slowest first, on {result.n} rows"
    if not info["certified"]:
        return (
            f"no setting was certified for {goal} ({tests}): falling back to the final exit (saved as "
            "budget k=K); more validation rows or a larger --max-drop would let early exit through"
        )
    return (
        f"certified {goal} ({tests}); on this split: drop {info['empirical_drop']:.2f} points; controlled "
        f"risk (share of inputs early exit gets wrong where the final exit is right, which bounds the drop) "
        f"{info['empirical_risk']:.2f} points, upper bound {info['risk_bound']:.2f} "
        f"(p = {info['p_value']:.3g})"
    )
