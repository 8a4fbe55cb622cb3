"""Calibration on a validation split: thresholds that meet a goal, temperatures, BEEM-A weights.

Everything here works on cached per-exit outputs (:class:`~offramp.evaluate.ExitOutputs`) of a
*validation* split — never the evaluation split — through :func:`offramp.engine.simulate`, so a whole
threshold grid costs one vectorised pass. Three rules pick the threshold:

* ``target_speedup``: the slowest setting whose layer-count speed-up (COSEE eq. 12, L·N/Σ l(n)) is at
  least the target (the most accurate one that still meets it);
* ``rule="beem"``: BEEM's threshold choice (see :func:`calibrate` for the exact rule);
* ``max_drop``: the fastest setting whose task score is within ``max_drop`` points of the final exit's.

The result is a plain dict, ``{"name", "params", "temperatures", "calibration"}``, stored as
``model.config.policy`` and used by default by :class:`~offramp.engine.EarlyExitEngine`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .engine import add_policy_args, policy_from_args, simulate
from .metrics import layers_per_input, speedup_summary
from .policies import BEEM, ExitOutput, Policy, PolicyError, describe_policies, get_policy, policy_from_config

RULES = ("speedup", "beem", "accuracy")


# ---------------------------------------------------------------------------------------------------------
# Temperatures and per-exit accuracies
# ---------------------------------------------------------------------------------------------------------


def fit_temperatures(logits: Any, labels: Any, max_iter: int = 100) -> list[float]:
    """One temperature per exit minimising the validation NLL of softmax(z_k / T_k) (Guo et al., 2017).

    LBFGS on log T (so T stays positive), starting at T = 1. Scaling is monotonic: predictions do not
    change, only the confidences the signals see. ``logits`` [K, N, C], ``labels`` [N] class ids.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 3 or z.shape[-1] < 2:
        raise ValueError(f"logits of shape {tuple(z.shape)}: temperature scaling needs [K, N, C] with C >= 2")
    temps = []
    for k in range(z.shape[0]):
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure(
            k: int = k, log_t: torch.Tensor = log_t, opt: torch.optim.Optimizer = opt
        ) -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z[k] / log_t.exp(), y)
            loss.backward()
            return loss

        opt.step(closure)
        t = float(log_t.detach().exp())
        temps.append(min(max(t, 1e-2), 1e2) if math.isfinite(t) else 1.0)
    return temps


def exit_accuracies(logits: Any, labels: Any) -> list[float]:
    """Validation accuracy of every exit: BEEM-A's expert weights w_k."""
    z = np.asarray(logits)
    y = np.asarray(labels)
    return [float(v) for v in (z.argmax(-1) == y[None, :]).mean(1)]


# ---------------------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------------------


def _scores(
    task: str | None, predictions: np.ndarray, labels: np.ndarray, regression: bool
) -> tuple[str, np.ndarray]:
    """Primary task metric for every row of ``predictions`` [T, N] (vectorised for accuracy)."""
    from .metrics import primary_metric, task_metrics

    metric = primary_metric(task, regression=regression)
    if metric == "accuracy":
        return metric, (predictions == labels[None, :]).mean(1)
    values = [task_metrics(task, row, labels, regression=regression)[metric] for row in predictions]
    return metric, np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-1.0)


def sweep(
    policy: Policy,
    logits: np.ndarray,
    labels: np.ndarray,
    exits: list[int],
    thresholds: Any = None,
    confidence: np.ndarray | None = None,
    task: str | None = None,
    multi_model: bool = False,
    grid_size: int = 256,
) -> dict[str, Any]:
    """Simulate ``policy`` over a grid (default: ``policy.grid``) and measure every setting.

    Returns ``thresholds`` [T] or [T, K], ``exit_slot`` [T, N], ``prediction`` [T, N], ``speedup`` [T]
    (COSEE eq. 12), ``score`` [T] and the metric name.
    """
    regression = logits.shape[-1] == 1
    if thresholds is None:
        thresholds = policy.grid(
            torch.as_tensor(logits), None if confidence is None else torch.as_tensor(confidence), grid_size
        )
    sim = simulate(policy, logits, thresholds, confidence, regression=regression)
    layers = layers_per_input(sim.exit_slot, exits, multi_model)
    speedup = exits[-1] * layers.shape[-1] / layers.sum(-1)
    metric, score = _scores(task, sim.prediction, labels, regression)
    grid = np.asarray(thresholds, dtype=np.float64)
    return {
        "thresholds": grid,
        "exit_slot": sim.exit_slot,
        "prediction": sim.prediction,
        "speedup": speedup,
        "score": score,
        "metric": metric,
    }


def _errors(prediction: np.ndarray, labels: np.ndarray, regression: bool) -> np.ndarray:
    """Per-input error: 0/1 misclassification, or squared error for regression."""
    if regression:
        return (prediction.astype(np.float64) - labels.astype(np.float64)) ** 2
    return (prediction != labels).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------


def calibrate(
    outputs: Any,
    policy: Policy | str | dict[str, Any] = "maxprob",
    *,
    target_speedup: float | None = None,
    rule: str | None = None,
    max_drop: float | None = None,
    per_exit: bool = False,
    temperature_scaling: bool = False,
    task: str | None = None,
    multi_model: bool = False,
    compare: str = "same_inputs",
    grid_size: int = 512,
    split: str | None = None,
) -> dict[str, Any]:
    """Choose the policy's threshold on validation outputs; returns the ``model.config.policy`` dict.

    ``outputs``: :class:`~offramp.evaluate.ExitOutputs` of a validation split (logits, labels, exits,
    confidence). Exactly one goal:

    * ``target_speedup=X``: the slowest grid setting with layer-count speed-up >= X.
    * ``rule="beem"``: BEEM's rule, "minimise alpha subject to q_alpha <= p" (slides, *Threshold
      choice*). Here q_alpha is the error rate among the validation inputs that leave before the last
      exit and p the final exit's error rate *on those same inputs* (``compare="same_inputs"``, so
      early exit never hurts the inputs it touches; ``compare="overall"`` uses the final exit's error on
      the whole split instead, the slides' literal p). Among the settings that satisfy it, the fastest is
      taken (for BEEM the smallest alpha); when no setting with early exits satisfies it, the setting
      that never exits early. With ``per_exit=True`` (BEEM only) one alpha per exit is chosen greedily
      from exit 1 up: alpha_i is the smallest value such that the inputs leaving at exit i (among those
      still running) err no more often than the final exit does on them.
    * ``max_drop=D``: the fastest setting whose primary task metric is at least the final exit's
      minus D points (D = 0.5 means 0.5 percentage points).

    BEEM-A (``weights="accuracy"``) gets its weights from the validation accuracy of each exit first;
    ``temperature_scaling=True`` fits one temperature per exit by NLL before anything else.
    """
    goals = [g for g in (target_speedup, rule, max_drop) if g is not None]
    if len(goals) != 1:
        raise ValueError("calibrate needs exactly one goal: target_speedup=X, rule='beem' or max_drop=D")
    if rule is not None and rule != "beem":
        raise ValueError(f"unknown rule {rule!r}; expected 'beem' (or use target_speedup / max_drop)")
    if compare not in ("same_inputs", "overall"):
        raise ValueError(f"compare={compare!r}: expected 'same_inputs' or 'overall'")
    if outputs.labels is None:
        raise ValueError("calibration needs a labelled validation split; these outputs have no labels")
    logits = np.asarray(outputs.logits, dtype=np.float32)
    labels = np.asarray(outputs.labels)
    exits = list(outputs.exits)
    confidence = None if outputs.confidence is None else np.asarray(outputs.confidence, dtype=np.float32)
    regression = logits.shape[-1] == 1
    pol = get_policy(policy) if isinstance(policy, str) else policy_from_config(policy)
    if pol.needs_confidence and confidence is None:
        raise PolicyError(f"policy {pol.kind!r} reads learned-exit confidences, but these outputs have none")

    info: dict[str, Any] = {"split": split, "n": int(len(labels)), "exits": exits}
    if temperature_scaling:
        if regression:
            raise ValueError("temperature scaling needs class probabilities; this is a regression model")
        pol = _replace(pol, temperatures=fit_temperatures(logits, labels))
    if isinstance(pol, BEEM) and pol.weights == "accuracy":
        pol = _replace(pol, weights=exit_accuracies(logits, labels))
        info["weights_from"] = "validation accuracy of each exit (BEEM-A)"
    if per_exit and not (isinstance(pol, BEEM) and rule == "beem"):
        raise ValueError("per-exit calibration is implemented for the BEEM rule with a beem policy")

    final_pred = logits[-1, :, 0] if regression else logits[-1].argmax(-1)
    metric, final_score = _scores(task, final_pred[None, :], labels, regression)
    info.update({"metric": metric, "final_score": float(final_score[0])})

    if per_exit:
        chosen = _beem_per_exit(pol, logits, labels, compare)
        info["rule"] = "beem"
        info["compare"] = compare
    else:
        result = sweep(pol, logits, labels, exits, None, confidence, task, multi_model, grid_size)
        grid, speed, score = result["thresholds"], result["speedup"], result["score"]
        info["grid_size"] = int(len(grid))
        if target_speedup is not None:
            if not target_speedup >= 1.0:
                raise ValueError(f"target speed-up {target_speedup!r}: expected a ratio >= 1.0 (e.g. 2.0)")
            ok = speed >= target_speedup - 1e-9
            if not ok.any():
                raise ValueError(
                    f"target speed-up {target_speedup:g}x is out of reach for policy {pol.kind!r} on this "
                    f"split: its fastest setting gives {speed.max():.2f}x"
                )
            idx = _pick(ok, -speed, score)
            info.update({"rule": "speedup", "target_speedup": float(target_speedup)})
        elif max_drop is not None:
            if not (math.isfinite(max_drop) and max_drop >= 0):
                raise ValueError(f"max drop {max_drop!r}: expected points >= 0 (0.5 = half a point)")
            ok = score >= final_score[0] - max_drop / 100.0 - 1e-12
            if not ok.any():
                raise ValueError(
                    f"no setting of policy {pol.kind!r} stays within {max_drop:g} points of the final exit"
                )
            idx = _pick(ok, speed, score)
            info.update({"rule": "accuracy", "max_drop": float(max_drop)})
        else:
            idx, beem_info = _beem_rule(result, final_pred, labels, regression, compare, len(exits))
            info.update({"rule": "beem", "compare": compare, **beem_info})
        chosen = grid[idx]
        chosen = chosen.tolist() if np.ndim(chosen) else float(chosen)
    final = pol.with_threshold(_as_axis_value(pol, chosen))
    sim = simulate(final, logits, None, confidence, regression=regression)
    info.update(speedup_summary(sim.exit_slot[0], exits, multi_model))
    info["score"] = float(_scores(task, sim.prediction, labels, regression)[1][0])
    config = final.to_config()
    config["calibration"] = info
    return _jsonable(config)


def _pick(ok: np.ndarray, primary: np.ndarray, score: np.ndarray) -> int:
    """Index maximising ``primary`` then ``score`` among ``ok`` rows."""
    candidates = np.flatnonzero(ok)
    order = np.lexsort((score[candidates], primary[candidates]))
    return int(candidates[order[-1]])


def _beem_rule(
    result: dict[str, Any],
    final_pred: np.ndarray,
    labels: np.ndarray,
    regression: bool,
    compare: str,
    num_exits: int,
) -> tuple[int, dict[str, Any]]:
    """The fastest grid setting whose early-exit error is no higher than the final exit's (see calibrate)."""
    slots, pred = result["exit_slot"], result["prediction"]
    early = slots < num_exits - 1
    n_early = early.sum(1)
    denom = np.maximum(n_early, 1)
    err_early = (_errors(pred, labels, regression) * early).sum(1) / denom
    final_err = _errors(final_pred, labels, regression)
    if compare == "same_inputs":
        ref = (final_err[None, :] * early).sum(1) / denom
    else:
        ref = np.full(len(slots), final_err.mean())
    ok = (n_early > 0) & (err_early <= ref + 1e-12)
    if ok.any():
        idx = _pick(ok, result["speedup"], result["score"])
    else:  # nothing early is safe: the setting with the fewest early exits (ideally none)
        idx = _pick(n_early == n_early.min(), -result["speedup"], result["score"])
    return idx, {
        "early_exits": int(n_early[idx]),
        "early_error": float(err_early[idx]),
        "final_error_on_reference": float(ref[idx]),
    }


def _beem_per_exit(pol: BEEM, logits: np.ndarray, labels: np.ndarray, compare: str) -> list[float]:
    """Greedy per-exit alphas (see :func:`calibrate`): exit 1 first, each on the inputs still running."""
    num_exits, n = logits.shape[:2]
    state = pol.init_state(n, num_exits, thresholds=0.0)
    scores, preds = [], []
    with torch.no_grad():
        for k in range(num_exits):  # the policy's own steps: S_k and the prediction an exit would give
            state, _, pred = pol.step(state, k, ExitOutput(torch.as_tensor(logits[k])))
            scores.append(state.values["score"][0].double().numpy())
            preds.append(pred[0].numpy())
    wrong = np.stack(preds) != labels[None, :]
    final_wrong = logits[-1].argmax(-1) != labels
    running = np.ones(n, dtype=bool)
    never = float(sum(pol.weight(k) for k in range(num_exits)) + 1.0)  # above any reachable S
    alphas = []
    for k in range(num_exits - 1):
        idx = np.flatnonzero(running)
        if idx.size == 0:
            alphas.append(never)
            continue
        s = scores[k][idx]
        order = np.argsort(-s, kind="stable")
        s_sorted = s[order]
        cum_err = np.cumsum(wrong[k, idx][order])
        if compare == "same_inputs":
            cum_ref = np.cumsum(final_wrong[idx][order])
        else:
            cum_ref = final_wrong.mean() * np.arange(1, idx.size + 1)
        # a prefix may only end where the next score is strictly smaller (ties leave together)
        ends = np.flatnonzero(np.append(s_sorted[1:] < s_sorted[:-1], True))
        ok = ends[cum_err[ends] <= cum_ref[ends] + 1e-12]
        if ok.size == 0:
            alphas.append(never)
            continue
        last = int(ok.max())
        alpha = s_sorted[last] if last + 1 >= idx.size else (s_sorted[last] + s_sorted[last + 1]) / 2
        alphas.append(float(alpha))
        running[idx[order[: last + 1]]] = False
    alphas.append(0.0)  # the last exit always exits; its alpha is never read
    return alphas


def _as_axis_value(pol: Policy, value: Any) -> Any:
    if isinstance(value, list):
        return value
    return int(round(value)) if pol.integer_axis else float(value)


def _replace(pol: Policy, **changes: Any) -> Policy:
    import dataclasses

    return dataclasses.replace(pol, **changes)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def calibrate_model(model: Any, data: Any, batch_size: int = 64, **kwargs: Any) -> dict[str, Any]:
    """Collect ``model``'s per-exit outputs on validation ``data``, calibrate, set ``model.config.policy``."""
    from .evaluate import collect_exit_outputs

    outputs = collect_exit_outputs(model, data, batch_size)
    kwargs.setdefault("task", getattr(data, "task", None) or getattr(model.config, "task", None))
    kwargs.setdefault("multi_model", hasattr(model, "members"))
    result = calibrate(outputs, **kwargs)
    model.config.policy = result
    return result


# ---------------------------------------------------------------------------------------------------------
# Saving and the command line: offramp calibrate
# ---------------------------------------------------------------------------------------------------------


def save_policy(model_dir: str | os.PathLike[str], policy: dict[str, Any]) -> Path:
    """Write ``policy`` into the folder's ``offramp.json`` (``cascade.json`` for a cascade), atomically;
    the weights are untouched."""
    from .model import CONFIG_FILE

    path = Path(model_dir) / CONFIG_FILE
    if (Path(model_dir) / "cascade.json").is_file():
        path = Path(model_dir) / "cascade.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} not found; expected a model folder written by `offramp train`"
        )
    config = json.loads(path.read_text())
    config["policy"] = policy
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def add_calibrate_parser(sub: Any) -> argparse.ArgumentParser:
    """``offramp calibrate MODEL_DIR ...``: choose and save the model's default exit policy."""
    from .cli import HEAVY_COMMANDS, add_data_args

    p = sub.add_parser(
        "calibrate",
        help=HEAVY_COMMANDS["calibrate"][2],
        description="Run the model once over a validation split (by default the part of train that "
        "`offramp train` held out, read from the model folder; never the GLUE dev split, which is the "
        "evaluation split), simulate the policy over a grid of thresholds, pick one by the chosen goal and "
        "save it in MODEL_DIR/offramp.json; `offramp predict` and `offramp bench` then use it by default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="goals:\n"
        "  --target-speedup X  slowest setting with layer-count speed-up L*N/sum(l(n)) >= X\n"
        "                      (COSEE eq. 12)\n"
        "  --rule beem         smallest threshold whose error on the inputs that exit early is no\n"
        "                      higher than the final exit's error on those inputs (BEEM);\n"
        "                      --per-exit: one alpha per exit\n"
        "  --max-drop D        fastest setting within D points (0.5 = half a point) of the final\n"
        "                      exit's score\n\n"
        "exit policies (--policy NAME; [axis] is the threshold being calibrated):\n"
        + describe_policies()
        + "\n\nexamples:\n"
        "  offramp calibrate runs/sst2 --task sst2 --target-speedup 2.0 --policy entropy\n"
        "  offramp calibrate runs/sst2 --task sst2 --rule beem --policy beem-a --per-exit",
    )
    p.add_argument("model_dir", help="a folder written by `offramp train`")
    add_data_args(p)
    p.add_argument(
        "--split",
        help="validation split to calibrate on (default: the rows of train that `offramp train` held out, "
        "found from the val_size/seed it recorded; with --data-file, the whole file)",
    )
    p.add_argument(
        "--val-size", type=float, help="rows carved from train as validation (default: as recorded)"
    )
    p.add_argument("--seed", type=int, help="seed of that carve (default: as recorded)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-speedup", type=float, metavar="X", help="layer-count speed-up to reach, e.g. 2.0"
    )
    goal.add_argument("--rule", choices=["beem"], help="BEEM's threshold rule")
    goal.add_argument(
        "--max-drop", type=float, metavar="D", help="allowed drop in points from the final exit"
    )
    add_policy_args(p)
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
    p.add_argument("--dry-run", action="store_true", help="print the result, do not save it")
    p.set_defaults(func=run_calibrate)
    return p


def validation_data(args: argparse.Namespace, model: Any) -> tuple[Any, str]:
    """The validation split named on the command line, or the one `offramp train` held out."""
    from .cli import load_from_args
    from .data import train_val_split

    if args.task is None and args.data_file is None and args.hf_dataset is None:
        args.task = getattr(model.config, "task", None)
    if args.split is not None and args.split != "train":
        if args.split in ("dev", "validation", "test"):
            print(
                f"offramp calibrate: warning: calibrating on the {args.split!r} split; if you also evaluate "
                "on it, the reported scores will be optimistic",
                file=sys.stderr,
            )
        return load_from_args(args, args.split), args.split
    if args.split is None and args.val_size is None:
        if args.data_file is not None:  # a file named explicitly is the validation data
            return load_from_args(args, "train"), f"file {args.data_file}"
        if args.hf_dataset is not None:
            raise ValueError("--hf-dataset needs --split NAME (a validation split, never the evaluation one)")
    info = getattr(model.config, "info", {}) or {}
    val_size = args.val_size if args.val_size is not None else info.get("val_size")
    seed = args.seed if args.seed is not None else info.get("seed")
    if not val_size or seed is None:
        raise ValueError(
            "this model folder records no held-out validation split (info.val_size/seed); pass --split NAME "
            "or --val-size N --seed S (never the split you evaluate on)"
        )
    full = load_from_args(args, "train")
    size = int(val_size) if float(val_size) >= 1 else float(val_size)
    _, val = train_val_split(full, size, seed=int(seed))
    return val, f"train[held-out {len(val)} rows, seed {seed}]"


def run_calibrate(args: argparse.Namespace) -> int:
    """Implementation of ``offramp calibrate``."""
    from .cascade import load_any

    model = load_any(args.model_dir)
    data, split = validation_data(args, model)
    if data.labels is None:
        raise ValueError(f"the calibration split {split!r} has no labels")
    policy = policy_from_args(args.policy, args.threshold, args.param)
    if policy is None:
        saved = getattr(model.config, "policy", None)
        policy = policy_from_config(saved) if saved else get_policy("maxprob")
        if saved:
            policy = _replace(policy, temperatures=None)
    result = calibrate_model(
        model,
        data,
        batch_size=args.batch_size,
        policy=policy,
        target_speedup=args.target_speedup,
        rule=args.rule,
        max_drop=args.max_drop,
        per_exit=args.per_exit,
        temperature_scaling=args.temperature_scaling,
        compare=args.compare.replace("-", "_"),
        split=split,
    )
    cal = result["calibration"]
    print(
        f"{result['name']} {json.dumps(result['params'])}: speed-up {cal['speedup']:.2f}x "
        f"({100 * cal['saved_layers']:.0f}% layers saved), {cal['metric']} {cal['score']:.4f} "
        f"vs final exit {cal['final_score']:.4f} on {split}",
        file=sys.stderr,
    )
    if args.dry_run:
        print(json.dumps(result, indent=2))
    else:
        path = save_policy(args.model_dir, result)
        print(f"saved as the default policy in {path}", file=sys.stderr)
    return 0
