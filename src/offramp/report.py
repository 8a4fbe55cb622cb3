"""Speed–accuracy reports: every policy's curve and the papers' analyses, as JSON, Markdown and plots.

:func:`evaluate_policies` turns cached :class:`~offramp.evaluate.ExitOutputs` into one JSON-ready dict
(curves, scores at set speed-ups, AUC, exit histograms, DIS, premature / delayed exits, overthinking);
:func:`write_report` renders it for a person; :func:`compare_runs` aggregates evaluate JSONs over seeds.
All numbers come from ``calibrate.sweep``, ``metrics`` and ``analysis``: nothing is recomputed here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import (
    curve_auc,
    difficulty_inversion_score,
    exit_failure_rates,
    exit_histogram,
    interpolate_at,
    mean_interval,
    overthinking_rate,
)
from .calibrate import _scores, exit_accuracies, sweep
from .simulate import simulate
from .evaluate import ExitOutputs, exit_predictions, scores_from_outputs
from .metrics import cost_fraction, layers_per_input, saved_layers_fraction, speedup_ratio, speedup_summary
from .policies import BEEM, PolicyError, get_policy, list_policies, policy_from_config, regression_policies
from .io import atomic_dir
from .signals import SIGNALS

TARGETS: tuple[float, ...] = (1.5, 2.0, 3.0)
#: Signals whose per-exit Difficulty Inversion Score is reported (learned only when the model has heads).
DIS_SIGNALS: tuple[str, ...] = ("maxprob", "entropy", "norm_energy", "learned")
AUC_RANGE: tuple[float, float] = (1.0, 3.0)


def target_key(target: float) -> str:
    """JSON key of a target speed-up: ``2.0`` -> ``"2"``, ``1.5`` -> ``"1.5"``."""
    return f"{target:g}"


def jsonable(value: Any) -> Any:
    """Lists, ints and floats only; NaN and infinities become None (JSON null)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def select_policies(
    patterns: Sequence[str] | None = None, regression: bool = False, has_confidence: bool = False
) -> list[str]:
    """Registered policy names matching ``patterns`` (shell wildcards; default all) that apply here.

    Policies reading learned-exit confidences are left out when the outputs have none; regression
    outputs keep only regression-capable policies. A pattern matching no policy at all is an error.
    """
    names: list[str] = []
    for pattern in patterns or ["*"]:
        found = list_policies(pattern)
        if not found:
            raise PolicyError(f"no policy matches {pattern!r}; known policies: {', '.join(list_policies())}")
        names += [n for n in found if n not in names]
    allowed = set(regression_policies()) if regression else None
    return [
        n
        for n in names
        if (allowed is None or n in allowed) and (has_confidence or not get_policy(n).needs_confidence)
    ]


def _correct(outputs: ExitOutputs, regression: bool) -> np.ndarray | None:
    """[K, N] whether each exit's prediction is right (None for regression: no right/wrong)."""
    if regression or outputs.labels is None:
        return None
    return exit_predictions(np.asarray(outputs.logits), False) == np.asarray(outputs.labels)[None, :]


def _setting(
    slots: np.ndarray, exits: list[int], multi_model: bool, score: float, correct: np.ndarray | None
) -> dict[str, Any]:
    """One operating point: speed-ups by every convention, score, exit histogram, failure rates."""
    info = speedup_summary(slots, exits, multi_model)
    info["exit_counts"] = exit_histogram(slots, len(exits)).tolist()
    info["score"] = float(score)
    if correct is not None:
        info.update(exit_failure_rates(slots, correct))
    return info


def evaluate_policies(
    outputs: ExitOutputs,
    task: str | None,
    regression: bool,
    policies: Sequence[str] | None = None,
    grid_size: int = 100,
    targets: Sequence[float] = TARGETS,
    multi_model: bool = False,
    calibrated_policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sweep every applicable policy over cached exit outputs and run the papers' analyses.

    Returns ``{"metric", "exits", "examples", "targets", "multi_model", "final_score", "per_exit",
    "policies": {name: {"curve", "at_speedup", "auc", "near_2x"}}, "analysis", "calibrated"}``; see the
    README's evaluate-JSON table. BEEM-A's accuracy weights are taken from these same outputs (an
    optimistic choice: on a test split they peek at its labels). JSON-ready: NaN is None.
    """
    if outputs.labels is None:
        raise ValueError("a speed–accuracy report needs labels; these outputs have none")
    logits = np.asarray(outputs.logits, dtype=np.float32)
    labels = np.asarray(outputs.labels)
    exits = list(outputs.exits)
    conf = None if outputs.confidence is None else np.asarray(outputs.confidence, dtype=np.float32)
    correct = _correct(outputs, regression)
    per_exit = scores_from_outputs(outputs, task, regression)
    names = select_policies(policies, regression, conf is not None)

    curves: dict[str, Any] = {}
    for name in names:
        pol = get_policy(name)
        if isinstance(pol, BEEM) and pol.weights == "accuracy":
            pol = dataclasses.replace(pol, weights=exit_accuracies(logits, labels))
        res = sweep(pol, logits, labels, exits, None, conf, task, multi_model, grid_size)
        slots = np.asarray(res["exit_slot"])
        layers = layers_per_input(slots, exits, multi_model)
        speed = np.atleast_1d(speedup_ratio(layers, exits[-1]))
        score = np.asarray(res["score"], dtype=float)
        at = interpolate_at(speed, score, targets)
        # The grid setting nearest 2x (ties: the better score), for histograms and failure rates.
        near = int(np.lexsort((-score, np.abs(speed - 2.0)))[0])
        point = _setting(slots[near], exits, multi_model, score[near], correct)
        point["threshold"] = np.asarray(res["thresholds"])[near]
        curves[name] = {
            "curve": {
                "threshold": res["thresholds"],
                "speedup": speed,
                "saved_layers": np.atleast_1d(saved_layers_fraction(layers, exits[-1])),
                "cost_fraction": np.atleast_1d(cost_fraction(slots, exits, multi_model)),
                "score": score,
            },
            "at_speedup": {target_key(t): float(v) for t, v in zip(targets, at, strict=True)},
            "auc": curve_auc(speed, score, *AUC_RANGE),
            "near_2x": point,
        }

    analysis: dict[str, Any] = {"dis": {}, "overthinking": None}
    if correct is not None:
        analysis["overthinking"] = overthinking_rate(correct)
        for sig_name in DIS_SIGNALS:
            if sig_name == "learned" and conf is None:
                continue
            sig = SIGNALS[sig_name]
            values = sig(torch.as_tensor(logits), None if conf is None else torch.as_tensor(conf)).numpy()
            analysis["dis"][sig_name] = [
                difficulty_inversion_score(values[k], correct[k], sig.confidence_positive)
                for k in range(len(exits))
            ]

    calibrated = None
    if calibrated_policy:
        pol = policy_from_config(calibrated_policy)
        sim = simulate(pol, logits, None, conf, regression=regression)
        score = _scores(task, np.asarray(sim.prediction), labels, regression)[1][0]
        calibrated = {"policy": calibrated_policy}
        calibrated.update(_setting(np.asarray(sim.exit_slot)[0], exits, multi_model, score, correct))

    return jsonable(
        {
            "metric": per_exit[0]["metric"],
            "exits": exits,
            "examples": int(labels.shape[0]),
            "targets": list(targets),
            "auc_range": list(AUC_RANGE),
            "multi_model": multi_model,
            "final_score": per_exit[-1]["score"],
            "per_exit": [{k: r[k] for k in ("exit", "layer", "score")} for r in per_exit],
            "policies": curves,
            "analysis": analysis,
            "calibrated": calibrated,
        }
    )


# ---------------------------------------------------------------------------------------------------------
# Markdown + plots
# ---------------------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(result: dict[str, Any], path: Path, title: str) -> None:
    """Speed–accuracy curves, one line per policy, with the final exit's score dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, pol) in enumerate(result["policies"].items()):
        x = np.array([np.nan if v is None else v for v in pol["curve"]["speedup"]], dtype=float)
        y = np.array([np.nan if v is None else v for v in pol["curve"]["score"]], dtype=float)
        order = np.argsort(x)
        style = {"color": plt.cm.tab20(i % 20), "linestyle": "-" if i < 10 else "-."}
        ax.plot(x[order], y[order], marker=".", markersize=3, linewidth=1, label=name, **style)
    if result.get("final_score") is not None:
        ax.axhline(result["final_score"], color="black", linestyle="--", linewidth=1, label="final exit")
    ax.set_xlabel("speed-up (L·N / Σ l(n))")
    ax.set_ylabel(result["metric"])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histograms(result: dict[str, Any], path: Path) -> None:
    """Small multiples: how many inputs leave at each exit, at each policy's setting nearest 2×."""
    plt = _plt()
    names = list(result["policies"])
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False, sharey=True)
    labels = [str(layer) for layer in result["exits"]]
    for ax, name in zip(axes.flat, names, strict=False):
        point = result["policies"][name]["near_2x"]
        ax.bar(labels, point["exit_counts"], color="tab:blue")
        ax.set_title(f"{name} ({_num(point['speedup'], 2)}×)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.supxlabel("exit layer", fontsize=8)
    fig.supylabel("inputs", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_exit(result: dict[str, Any], path: Path) -> None:
    """Each exit's own score against its layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    layers = [r["layer"] for r in result["per_exit"]]
    scores = [np.nan if r["score"] is None else r["score"] for r in result["per_exit"]]
    ax.plot(layers, scores, marker="o")
    ax.set_xlabel("exit layer")
    ax.set_ylabel(result["metric"])
    ax.set_title("per-exit scores")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_markdown(result: dict[str, Any], title: str) -> str:
    """The report as Markdown, readable without the JSON."""
    metric, targets = result["metric"], result["targets"]
    keys = [target_key(t) for t in targets]
    lo, hi = result.get("auc_range", AUC_RANGE)
    md = [f"# {title}", ""]
    md += [
        f"{result['examples']} examples, exits after layers {result['exits']}, metric: **{metric}**"
        + (" (multi-model cascade: cost sums every member run)." if result.get("multi_model") else "."),
        "",
        "## Per-exit scores",
        "",
        f"Each exit's {metric} when every input leaves there; the last row is the full model.",
        "",
    ]
    md += _table(["exit", "layer", metric], [[r["exit"], r["layer"], r["score"]] for r in result["per_exit"]])
    md += [
        "## Speed–accuracy",
        "",
        f"{metric} of each policy at set speed-ups (L·N / Σ l(n)), linearly interpolated along its curve "
        f"(– = the curve does not reach it); AUC is the mean {metric} over speed-ups {lo:g}–{hi:g}×. "
        f"The full model scores {_num(result['final_score'])}.",
        "",
        "![speed-accuracy curves](curves.png)",
        "",
    ]
    md += _table(
        ["policy", *[f"@{k}×" for k in keys], f"AUC {lo:g}–{hi:g}×"],
        [[n, *[p["at_speedup"][k] for k in keys], p["auc"]] for n, p in result["policies"].items()],
    )
    md += [
        "## Exits at about 2×",
        "",
        "At each policy's grid setting nearest 2×: the speed-up by all three conventions (L·N/Σl; PCEE's "
        "share of layers saved; SWEET's share of the full cost), the score, how many inputs left at each "
        "exit, and COSEE's premature rate (exits taken on a wrong prediction ÷ all exits taken early) and "
        "delayed rate (continues past a right prediction ÷ all continues).",
        "",
        "![exit histograms](histograms.png)",
        "",
    ]
    rows = []
    for name, p in result["policies"].items():
        pt = p["near_2x"]
        counts = " / ".join(str(c) for c in pt["exit_counts"])
        rows.append(
            [name, pt["speedup"], pt["saved_layers"], pt["cost_fraction"], pt["score"], counts]
            + [pt.get("premature"), pt.get("delayed")]
        )
    md += _table(["policy", "speed-up", "saved", "cost", metric, "exit counts", "premature", "delayed"], rows)
    cal = result.get("calibrated")
    md += ["## Calibrated setting", ""]
    if cal:
        params = json.dumps(cal["policy"].get("params", {}))
        md += [
            f"The model's saved policy `{cal['policy'].get('name')}` {params}, applied to this split: "
            "what deploying it as calibrated gives.",
            "",
        ]
        counts = " / ".join(str(c) for c in cal["exit_counts"])
        md += _table(
            ["speed-up", "saved", "cost", metric, "exit counts", "premature", "delayed"],
            [
                [cal["speedup"], cal["saved_layers"], cal["cost_fraction"], cal["score"], counts]
                + [cal.get("premature"), cal.get("delayed")]
            ],
        )
    else:
        md += ["The model has no calibrated policy (run `offramp calibrate`).", ""]
    an = result["analysis"]
    md += ["## Analyses", ""]
    md += [
        f"Overthinking: **{_num(an['overthinking'])}**, the share of inputs some exit gets right but the "
        "last one gets wrong (what an oracle exit could recover).",
        "",
    ]
    if an["dis"]:
        md += [
            "Difficulty Inversion Score (CascadeBERT) per exit and signal: how well the signal ranks the "
            "exit's right predictions above its wrong ones (1 = perfect, 0.5 = random; – when the exit "
            "is all right or all wrong).",
            "",
        ]
        md += _table(
            ["exit layer", *an["dis"]],
            [[layer, *[v[k] for v in an["dis"].values()]] for k, layer in enumerate(result["exits"])],
        )
    md += ["Per-exit scores:", "", "![per-exit scores](per_exit.png)", ""]
    return "\n".join(md)


def write_report(result: dict[str, Any], out_dir: str | os.PathLike[str], title: str) -> Path:
    """Write ``report.md``, ``report.json`` and the PNGs into ``out_dir`` atomically (temp + rename)."""
    with atomic_dir(out_dir) as tmp:
        if result.get("policies"):
            plot_curves(result, tmp / "curves.png", title)
            plot_histograms(result, tmp / "histograms.png")
        plot_per_exit(result, tmp / "per_exit.png")
        (tmp / "report.md").write_text(render_markdown(result, title) + "\n")
        (tmp / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------------------
# Comparing runs over seeds
# ---------------------------------------------------------------------------------------------------------


def load_run(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An evaluate JSON (a file, or the one ``eval_*.json`` in a model folder) plus its model config.

    Returns ``{"path", "eval", "config"}``; ``config`` is the model's ``offramp.json`` / ``cascade.json``
    (None when not found).
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("eval_*.json"))
        if len(found) != 1:
            what = "no eval_*.json" if not found else f"{len(found)} eval_*.json files; pass one"
            raise FileNotFoundError(f"{str(p)!r} holds {what}")
        p = found[0]
    data = json.loads(p.read_text())
    if "policies" not in data:
        raise ValueError(f"{str(p)!r} has no 'policies' section; re-run `offramp evaluate` to add it")
    config = None
    for folder in (Path(data.get("model_dir") or p.parent), p.parent):
        for name in ("offramp.json", "cascade.json"):
            if (folder / name).is_file():
                config = json.loads((folder / name).read_text())
                break
        if config is not None:
            break
    return {"path": str(p), "eval": data, "config": config}


def run_identity(run: dict[str, Any]) -> tuple[str, str]:
    """(key, label) of a run's configuration: everything that matters except the seed."""
    cfg = run["config"]
    if cfg is None:
        return run["path"], Path(run["path"]).parent.name or run["path"]
    info = cfg.get("info") or {}
    scheme = info.get("scheme") or {}
    ident = {
        "task": run["eval"].get("task"),
        "split": run["eval"].get("split"),
        "backbone": cfg.get("backbone"),
        "exits": cfg.get("exits"),
        "scheme": scheme,
        "train_size": info.get("train_size"),
        "learned_exit": cfg.get("learned_exit"),
    }
    name = scheme.get("name", "?") if isinstance(scheme, dict) else str(scheme)
    label = f"{name} {cfg.get('backbone')} exits={cfg.get('exits')} n={info.get('train_size')}"
    return json.dumps(ident, sort_keys=True), label


def compare_runs(runs: Sequence[dict[str, Any]], points: int = 50) -> dict[str, Any]:
    """Group runs by configuration and give mean ± 95% interval over seeds per policy and target.

    Also a mean curve per configuration and policy: each run's curve interpolated onto a common
    speed-up grid (from 1× to the largest speed-up every run reaches), then averaged.
    """
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        key, label = run_identity(run)
        g = groups.setdefault(key, {"label": label, "runs": [], "seeds": [], "evals": []})
        g["runs"].append(run["path"])
        g["seeds"].append(((run["config"] or {}).get("info") or {}).get("seed"))
        g["evals"].append(run["eval"])
    out = []
    for g in groups.values():
        evals = g.pop("evals")
        targets = evals[0].get("targets") or list(TARGETS)
        names = [n for n in evals[0]["policies"] if all(n in e["policies"] for e in evals)]
        finals = [(e.get("final") or {}).get("score") for e in evals]
        g["final"] = mean_interval([np.nan if v is None else v for v in finals])
        g["policies"] = {}
        for name in names:
            pols = [e["policies"][name] for e in evals]
            at = {}
            for t in targets:
                vals = [p["at_speedup"].get(target_key(t)) for p in pols]
                mean, half = mean_interval([np.nan if v is None else v for v in vals])
                at[target_key(t)] = {"mean": mean, "half": half, "values": vals}
            auc = mean_interval([np.nan if p["auc"] is None else p["auc"] for p in pols])
            curves = [
                (np.array(p["curve"]["speedup"], dtype=float), np.array(p["curve"]["score"], dtype=float))
                for p in pols
            ]
            reach = min(np.nanmax(x) for x, _ in curves)
            grid = np.linspace(1.0, max(1.0, reach), points)
            ys = np.array([interpolate_at(x, y, grid) for x, y in curves])
            g["policies"][name] = {
                "at_speedup": at,
                "auc": {"mean": auc[0], "half": auc[1]},
                "mean_curve": {"speedup": grid, "score": np.nanmean(ys, axis=0) if ys.size else []},
            }
        g["targets"] = list(targets)
        out.append(g)
    return jsonable({"configurations": out})


def plot_compare(result: dict[str, Any], path: Path) -> None:
    """Overlay the mean curve of each configuration, one panel per policy."""
    plt = _plt()
    confs = result["configurations"]
    names = [n for n in (confs[0]["policies"] if confs else {}) if all(n in c["policies"] for c in confs)]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for c in confs:
            curve = c["policies"][name]["mean_curve"]
            y = [np.nan if v is None else v for v in curve["score"]]
            ax.plot(curve["speedup"], y, label=f"{c['label']} (n={len(c['runs'])})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("speed-up", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if names:
        axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_compare_markdown(result: dict[str, Any]) -> str:
    """Mean ± 95% interval (Student t over seeds) per configuration, policy and target speed-up."""
    md = [
        "# Comparison over seeds",
        "",
        "Each cell: mean ± half-width of the 95% Student-t interval over the seeds of one configuration "
        "(± 0 for a single seed), of the score interpolated at that speed-up.",
        "",
        "![mean curves](compare.png)",
        "",
    ]
    for c in result["configurations"]:
        md += [f"## {c['label']}", "", f"{len(c['runs'])} runs, seeds {c['seeds']}.", ""]
        keys = [target_key(t) for t in c["targets"]]
        rows = []
        for name, p in c["policies"].items():
            cells = [_pm(p["at_speedup"][k]["mean"], p["at_speedup"][k]["half"]) for k in keys]
            rows.append([name, *cells, _pm(p["auc"]["mean"], p["auc"]["half"])])
        md += _table(["policy", *[f"@{k}×" for k in keys], "AUC"], rows)
    return "\n".join(md)


def _pm(mean: float | None, half: float | None) -> str:
    return f"{_num(mean)} ± {_num(half)}" if mean is not None else "–"


def write_compare_report(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """``report.md`` + ``compare.png`` + ``compare.json`` in ``out_dir``, atomically."""
    with atomic_dir(out_dir) as tmp:
        plot_compare(result, tmp / "compare.png")
        (tmp / "report.md").write_text(render_compare_markdown(result) + "\n")
        (tmp / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    return Path(out_dir)
