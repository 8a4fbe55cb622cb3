"""Do the papers' claims hold here? MiniLM-L6 on SST-2, MRPC and RTE, every scheme, every policy.

For each task × run × seed: fine-tune (fixed epochs, no model selection), run every exit once over the
GLUE dev split, cache the exit logits (``claims/outputs/*.npz``), sweep every policy over its
threshold grid and read accuracy at 1.5×, 2× and 3× layer-count speed-up (linear interpolation along
the curve, as the papers' tables) and the curve's mean accuracy over 1–3× (AUC). Runs:

- ``joint`` / ``weighted`` / ``beem-kd`` / ``sweet`` / ``cosee``: exits after all 6 layers;
- ``single``: the single-exit baseline, a plain fine-tune with one head after layer 6;
- ``multi-model`` (opt in with ``--runs``): independent models of depth 1..6 (a cascade);
- ``cosee-paper-sst2`` (opt in): COSEE with the paper's SST-2 setting, β0=10, α=0.1.

Claims, each judged on the same dev examples of one seed (or the mean over seeds):

1. BEEM (slides): the BEEM policy on the BEEM-KD model is at least as accurate as its final exit at a
   speed-up > 1 (read at 1.5×).
2. PCEE-BERT: PCEE beats PABEE's patience at matched speed-up (1.5×, 2×, 3×; weighted-loss model, as
   in the paper, and the joint model).
3. SWEET: its early exits are more accurate than joint training's (exits 1–3; and the maxprob curve at
   2× and 3×).
4. COSEE: its curve lies above joint training's (normalised-energy threshold, COSEE's signal; AUC
   over 1–3× and each target).

Each verdict carries a 95% interval of the difference from a paired bootstrap over the dev examples
(1,000 resamples, the same resampled examples for both sides): a claim "holds" when the difference
has the claimed sign, and is "not significant" when the interval still covers 0. The interval is
dev-sample noise only; seed-to-seed noise needs more seeds (``--seeds``), which are averaged.
Accuracy everywhere (MRPC too), so the tasks read alike.

Resumable: each finished run writes ``claims/runs/<task>-<run>-s<seed>.json`` and is skipped when it
exists; the table (``claims.md``, ``claims.json``, ``claims_<task>.png``) is rebuilt from whatever
runs exist. The cached exit outputs (``claims/outputs/*.npz``) are git-ignored: the verdicts need
them, so ``--summary-only`` works where the runs were trained.

Run (about 80 minutes on 2 CPU cores for one seed of every task)::

    .venv/bin/python benchmarks/claims.py
    .venv/bin/python benchmarks/claims.py --tasks sst2 --seeds 43 44      # more seeds
    .venv/bin/python benchmarks/claims.py --tasks sst2 --runs multi-model cosee-paper-sst2
    .venv/bin/python benchmarks/claims.py --summary-only                  # table from finished runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

#: task -> training setting. SST-2: an 8,000-example subset drawn with the seed; MRPC, RTE: full train.
TASKS: dict[str, dict[str, Any]] = {
    "sst2": {"train_size": 8000, "epochs": 2.0, "max_length": 64},
    "mrpc": {"train_size": None, "epochs": 3.0, "max_length": 128},
    "rte": {"train_size": None, "epochs": 3.0, "max_length": 128},
}

#: run name -> build_and_train keyword arguments
RUNS: dict[str, dict[str, Any]] = {
    "single": {"scheme": "joint", "exits": [6]},
    "joint": {"scheme": "joint"},
    "weighted": {"scheme": "weighted"},
    "beem-kd": {"scheme": "beem-kd"},
    "sweet": {"scheme": "sweet"},
    # COSEE's QNLI setting (App. A); its SST-2 setting (β0=10) starves the middle exits in short
    # runs (benchmarks/results/train_schemes.md), and the paper grid-searches both per task.
    "cosee": {"scheme": "cosee", "scheme_options": {"beta0": 1.0, "alpha": 0.01}},
    "multi-model": {"scheme": "multi-model"},
    # COSEE's own SST-2 setting (App. A / Fig. 10), for the sensitivity to beta0 and alpha
    "cosee-paper-sst2": {"scheme": "cosee", "scheme_options": {"beta0": 10.0, "alpha": 0.1}},
}
DEFAULT_RUNS = [n for n in RUNS if n not in ("multi-model", "cosee-paper-sst2")]
POLICIES = ["budget", "maxprob", "entropy", "norm_energy", "patience", "pcee", "beem"]
TARGETS = (1.5, 2.0, 3.0)
#: The commands behind the committed results (each skips the runs that already exist).
COMMANDS = (
    "python benchmarks/claims.py",
    "python benchmarks/claims.py --tasks sst2 --seeds 43 44",
    "python benchmarks/claims.py --tasks sst2 --runs multi-model cosee-paper-sst2",
)
BOOTSTRAP = 1000  # paired resamples of the dev examples behind each verdict
#: The same verdicts on benchmarks/parity.py's runs at each scheme's chosen learning rate (it writes them).
CHOSEN_LR_FILE = "claims_chosen_lr.json"


def run_path(out: Path, task: str, run: str, seed: int) -> Path:
    return out / "claims" / "runs" / f"{task}-{run}-s{seed}.json"


def outputs_path(out: Path, task: str, run: str, seed: int) -> Path:
    """Cached dev exit outputs of one run (git-ignored: derived data, rebuilt by training the run)."""
    return out / "claims" / "outputs" / f"{task}-{run}-s{seed}.npz"


def train_and_score(task: str, run: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train one model, cache its dev exit outputs, evaluate every policy; the run's JSON record."""
    from offramp.cascade import CascadeModel
    from offramp.data import load_glue, subsample
    from offramp.evaluate import collect_exit_outputs
    from offramp.train import RunSpec, TrainConfig, build_and_train

    setting = TASKS[task]
    train = load_glue(task, args.glue_dir, "train")
    if setting["train_size"]:
        train = subsample(train, setting["train_size"], seed=seed)
    dev = load_glue(task, args.glue_dir, "dev")
    start = time.perf_counter()
    cfg = TrainConfig(
        epochs=args.epochs or setting["epochs"],
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=setting["max_length"],
        seed=seed,
        group_by_length=True,
        progress=not args.no_progress,
    )
    model, log = build_and_train(train, None, None, RunSpec(backbone="minilm-l6", **RUNS[run]), cfg)
    train_seconds = time.perf_counter() - start
    outputs = collect_exit_outputs(model, dev, batch_size=128, max_length=setting["max_length"])
    npz = outputs_path(out, task, run, seed)
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(f".{npz.stem}.tmp-{os.getpid()}.npz")
    outputs.save(str(tmp))
    os.replace(tmp, npz)
    return {
        "task": task,
        "run": run,
        "seed": seed,
        "spec": RUNS[run],
        "train_size": len(train),
        "dev_size": len(dev),
        "epochs": args.epochs or setting["epochs"],
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_length": setting["max_length"],
        "group_by_length": True,
        **score_outputs(outputs, isinstance(model, CascadeModel)),
        "train_seconds": train_seconds,
        "threads": torch.get_num_threads(),
    }


def score_outputs(outputs: Any, multi_model: bool | None = None) -> dict[str, Any]:
    """Per-exit accuracy and every policy's curve, accuracy at the targets and AUC (grid of 200).

    The cost model comes from ``outputs.costs``; ``multi_model``, when given, must agree with it (outputs
    cached before exit costs were stored get the cascade's costs from it).
    """
    from offramp.metrics import ExitCosts
    from offramp.report import evaluate_policies

    if multi_model and outputs.exit_costs is None:
        outputs.exit_costs = list(ExitCosts.cascade(outputs.exits).costs)
    result = evaluate_policies(outputs, None, False, POLICIES, grid_size=200, targets=TARGETS).to_json()
    if multi_model is not None and multi_model != result["multi_model"]:
        raise ValueError(f"multi_model={multi_model} but the outputs' exit costs say {result['multi_model']}")
    return {
        "multi_model": result["multi_model"],
        "exits": result["exits"],
        "per_exit": [r["score"] for r in result["per_exit"]],
        "final": result["final_score"],
        "policies": {
            name: {
                "at": pol["at_speedup"],
                "auc": pol["auc"],
                "speedup": pol["curve"]["speedup"],
                "score": pol["curve"]["score"],
            }
            for name, pol in result["policies"].items()
        },
    }


# -------------------------------------------------------------------------------------------------
# Summary: tables, verdicts, plots
# -------------------------------------------------------------------------------------------------


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if len(vals) == len(values) and vals else None


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of one task × run: per-exit accuracy, each policy's accuracy at each target, AUC."""
    first = records[0]
    out: dict[str, Any] = {
        "seeds": sorted(r["seed"] for r in records),
        "exits": first["exits"],
        "per_exit": [float(np.mean([r["per_exit"][k] for r in records])) for k in range(len(first["exits"]))],
        "final": float(np.mean([r["final"] for r in records])),
        "train_seconds": float(np.mean([r["train_seconds"] for r in records])),
        "policies": {},
    }
    for name in first["policies"]:
        pols = [r["policies"][name] for r in records]
        out["policies"][name] = {
            "at": {t: _mean([p["at"].get(t) for p in pols]) for t in first["policies"][name]["at"]},
            "auc": _mean([p["auc"] for p in pols]),
        }
    return out


def _fmt(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3f}"


class Evidence:
    """Per-example results of one task's finished runs, for statistics under resampled dev examples.

    A statistic is evaluated under example weights [B, N] (:func:`offramp.analysis.bootstrap_weights`;
    a row of ones gives the plain value) for each seed of a run: [seeds, B]. Policy curves come from
    the same sweep (grid of 200) as the tables, so plain values equal the tables' numbers.
    """

    def __init__(self, outputs: dict[str, list[Any]], multi: dict[str, bool] | None = None):
        #: run -> its seeds' ExitOutputs (seeds in the same order for every run: they pair up)
        self.outputs = outputs
        self.multi = {run: bool((multi or {}).get(run)) for run in outputs}
        self._curves: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray, int]]] = {}

    @classmethod
    def of_runs(cls, out: Path, task: str, runs: dict[str, list[dict[str, Any]]]) -> Evidence:
        """The cached dev outputs of this benchmark's finished runs (``runs``: run -> its seed records)."""
        from offramp.evaluate import ExitOutputs

        outputs = {
            run: [ExitOutputs.load(str(outputs_path(out, task, run, r["seed"]))) for r in recs]
            for run, recs in runs.items()
        }
        return cls(outputs, {run: bool(recs[0].get("multi_model")) for run, recs in runs.items()})

    def curves(self, run: str, policy: str) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Per seed: layers [T, N], correctness [T, N] and L of every setting of ``policy``'s sweep."""
        from offramp.metrics import ExitCosts
        from offramp.policies import get_policy
        from offramp.simulate import sweep

        key = (run, policy)
        if key not in self._curves:
            found = []
            for o in self.outputs[run]:
                # outputs cached before exit costs were stored: the run record says whether it is a cascade
                costs = ExitCosts.cascade(o.exits) if self.multi[run] else o.costs
                res = sweep(get_policy(policy), o, costs, grid_size=200)
                found.append((res.layers, np.asarray(res.prediction) == o.labels[None, :], costs.depth))
            self._curves[key] = found
        return self._curves[key]

    def exit_accuracy(self, run: str, k: int | slice, w: np.ndarray) -> np.ndarray:
        """[seeds, B] accuracy of exit k (or the mean over a slice of exits) under weights w."""
        from offramp.evaluate import exit_predictions

        vals = []
        for o in self.outputs[run]:
            right = (exit_predictions(o.logits, False) == o.labels[None, :]).astype(np.float64)[k]
            acc = (w @ np.atleast_2d(right).T) / w.sum(1, keepdims=True)
            vals.append(acc.mean(1))
        return np.asarray(vals)

    def at_speedup(self, run: str, policy: str, target: float, w: np.ndarray) -> np.ndarray:
        """[seeds, B] accuracy at a speed-up, interpolated along the resampled curve (NaN: not reached)."""
        from offramp.analysis import interpolate_at, resampled_curve

        vals = []
        for layers, right, total in self.curves(run, policy):
            speed, acc = resampled_curve(layers, right, total, w)
            vals.append([interpolate_at(speed[b], acc[b], [target])[0] for b in range(len(w))])
        return np.asarray(vals)

    def auc(self, run: str, policy: str, lo: float, hi: float, w: np.ndarray) -> np.ndarray:
        """[seeds, B] mean accuracy over speed-ups [lo, hi] of the resampled curve (NaN: not spanned)."""
        from offramp.analysis import curve_auc, resampled_curve

        vals = []
        for layers, right, total in self.curves(run, policy):
            speed, acc = resampled_curve(layers, right, total, w)
            vals.append([curve_auc(speed[b], acc[b], lo, hi) for b in range(len(w))])
        return np.asarray(vals)


def judge(a_seeds: np.ndarray, b_seeds: np.ndarray, strict: bool) -> dict[str, Any]:
    """Claim ``a > b`` (``a ≥ b`` when not strict) from [seeds, 1 + resamples] statistics.

    Column 0 holds the plain values, the others the bootstrap resamples; the claim is judged on the
    mean over seeds. With several seeds on both sides, seeds pair up in order (the same seed draws the
    same training subset) and each seed's own Δ is listed.
    """
    a, b = a_seeds.mean(0), b_seeds.mean(0)
    if not (math.isfinite(a[0]) and math.isfinite(b[0])):
        keys = ("a", "b", "delta", "ci", "holds", "significant", "per_seed_delta")
        return {**dict.fromkeys(keys), "verdict": "n/a (the curve does not reach this speed-up)"}
    delta = float(a[0] - b[0])
    boot = (a[1:] - b[1:])[np.isfinite(a[1:] - b[1:])]
    lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5])) if boot.size else (math.nan, math.nan)
    holds = delta > 0 if strict else delta >= 0
    significant = lo > 0 if holds else hi < 0
    word = ("holds" if holds else "does not hold") + ("" if significant else ", not significant")
    text = f"{word}: {a[0]:.3f} vs {b[0]:.3f} (Δ {delta:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}])"
    per_seed = None
    if len(a_seeds) > 1 and len(a_seeds) == len(b_seeds):
        per_seed = [float(x) for x in a_seeds[:, 0] - b_seeds[:, 0]]
        text += "; per seed Δ " + ", ".join(f"{d:+.3f}" for d in per_seed)
    return {"a": float(a[0]), "b": float(b[0]), "delta": delta, "ci": [lo, hi], "holds": holds,
            "significant": significant, "per_seed_delta": per_seed, "verdict": text}  # fmt: skip


def verdicts(task: str, ev: Evidence, n_dev: int, samples: int = BOOTSTRAP) -> list[dict[str, Any]]:
    """One entry per claim and comparison point for one task (only claims whose runs exist)."""
    from offramp.analysis import bootstrap_weights

    w = np.vstack([np.ones((1, n_dev)), bootstrap_weights(n_dev, samples, seed=0)])
    out: list[dict[str, Any]] = []
    have = set(ev.outputs)

    def add(claim: str, point: str, a: np.ndarray, b: np.ndarray, strict: bool = True) -> None:
        out.append({"task": task, "claim": claim, "point": point, **judge(a, b, strict)})

    if "beem-kd" in have:
        final = ev.exit_accuracy("beem-kd", -1, w)
        for t in (1.5, 2.0):
            point = f"beem-kd model: BEEM at {t:g}× vs its final exit"
            add("BEEM ≥ final exit", point, ev.at_speedup("beem-kd", "beem", t, w), final, strict=False)
    for model in ("weighted", "joint"):
        if model in have:
            for t in (1.5, 2.0):
                pcee, pabee = (ev.at_speedup(model, p, t, w) for p in ("pcee", "patience"))
                add("PCEE > PABEE", f"{model} model at {t:g}×", pcee, pabee)
            pcee, pabee = (ev.auc(model, p, 1.0, 2.0, w) for p in ("pcee", "patience"))
            add("PCEE > PABEE", f"{model} model, mean over 1–2×", pcee, pabee)
    if {"sweet", "joint"} <= have:
        claim = "SWEET early exits > joint"
        add(
            claim,
            "mean of exits 1–3",
            ev.exit_accuracy("sweet", slice(0, 3), w),
            ev.exit_accuracy("joint", slice(0, 3), w),
        )
        for k in range(3):
            add(claim, f"exit {k + 1}", ev.exit_accuracy("sweet", k, w), ev.exit_accuracy("joint", k, w))
        for t in (2.0, 3.0):
            sweet, joint = (ev.at_speedup(r, "maxprob", t, w) for r in ("sweet", "joint"))
            add(claim, f"maxprob at {t:g}×", sweet, joint)
    if {"cosee", "joint"} <= have:
        claim = "COSEE curve > joint"
        add(
            claim,
            "norm-energy, mean over 1–3×",
            ev.auc("cosee", "norm_energy", 1.0, 3.0, w),
            ev.auc("joint", "norm_energy", 1.0, 3.0, w),
        )
        for t in TARGETS:
            cosee, joint = (ev.at_speedup(r, "norm_energy", t, w) for r in ("cosee", "joint"))
            add(claim, f"norm-energy at {t:g}×", cosee, joint)
    return out


def plot_task(task: str, records: dict[str, dict[str, Any]], majority: float, path: Path) -> None:
    """Maxprob curve of each scheme (first seed); single-exit baseline dashed, majority class dotted.

    The y-axis starts just below the lowest accuracy plotted, so close curves stay apart; the
    majority-class line is drawn only when it falls inside that range.
    """
    from offramp.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    lowest = min(min(r["per_exit"]) for r in records.values())
    for i, (run, rec) in enumerate(sorted(records.items())):
        if run == "single":
            for ax in axes:
                ax.axhline(
                    rec["final"], color="black", linestyle="--", linewidth=1, label="single-exit baseline"
                )
            continue
        color = plt.cm.tab10(i % 10)
        pol = rec["policies"]["maxprob"]
        x = np.array([np.nan if v is None else v for v in pol["speedup"]], dtype=float)
        y = np.array([np.nan if v is None else v for v in pol["score"]], dtype=float)
        o = np.argsort(x)
        lowest = min(lowest, float(np.nanmin(np.where(x <= 4, y, np.nan))))
        axes[0].plot(x[o], y[o], linewidth=1.2, color=color, label=run)
        axes[1].plot(rec["exits"], rec["per_exit"], marker="o", linewidth=1.2, color=color, label=run)
    seed = min(r["seed"] for r in records.values())
    axes[0].set_xlim(1, 4)
    axes[0].set_xlabel("layer-count speed-up")
    axes[0].set_ylabel("dev accuracy")
    axes[0].set_title(f"{task}: max-prob threshold, per scheme (seed {seed})")
    axes[1].set_xlabel("exit layer")
    axes[1].set_title(f"{task}: accuracy of each exit (seed {seed})")
    bottom = lowest - 0.02
    for ax in axes:
        if majority > bottom:
            ax.axhline(majority, color="grey", linestyle=":", linewidth=1, label="majority class")
        ax.set_ylim(bottom=bottom)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(out: Path) -> dict[str, Any]:
    """Rebuild claims.json / claims.md / plots from the run records and their cached exit outputs.

    Verdicts need every run's outputs; if any is missing nothing is written (the committed tables
    stay as they are) and the missing files are named.
    """
    files = sorted((out / "claims" / "runs").glob("*.json"))
    records = [json.loads(p.read_text()) for p in files]
    missing = [p for r in records if not (p := outputs_path(out, r["task"], r["run"], r["seed"])).is_file()]
    if missing:
        names = ", ".join(p.name for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SystemExit(
            f"claims: {len(missing)} run(s) lack cached exit outputs ({names}) under {missing[0].parent}; "
            "they are not committed: train those runs again (delete their run records) to rebuild the tables"
        )
    finished = sorted(r["finished"] for r in records if r.get("finished"))
    summary: dict[str, Any] = {
        "provenance": {
            "commands": COMMANDS,
            "finished": [finished[0], finished[-1]] if finished else None,
            "machines": sorted({r["machine"] for r in records if r.get("machine")}),
        },
        "tasks": {},
        "verdicts": [],
    }
    for task in TASKS:
        recs = [r for r in records if r["task"] == task]
        if not recs:
            continue
        by_run: dict[str, list[dict[str, Any]]] = {}
        for r in recs:
            by_run.setdefault(r["run"], []).append(r)
        agg = {run: aggregate(by_run[run]) for run in RUNS if run in by_run}
        n_dev = recs[0]["dev_size"]
        evidence = Evidence.of_runs(out, task, by_run)
        labels = next(iter(evidence.outputs.values()))[0].labels
        majority = float(np.bincount(labels).max() / len(labels))
        summary["tasks"][task] = {
            "setting": {k: recs[0][k] for k in ("train_size", "epochs", "batch_size", "lr", "max_length")},
            "dev_size": n_dev,
            "majority_class": majority,
            "runs": agg,
        }
        summary["verdicts"] += verdicts(task, evidence, n_dev)
        first = {run: min(rs, key=lambda r: r["seed"]) for run, rs in by_run.items()}
        plot_task(task, first, majority, out / f"claims_{task}.png")
    chosen = out / CHOSEN_LR_FILE
    if chosen.is_file():
        summary["chosen_lr"] = json.loads(chosen.read_text())
    (out / "claims.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "claims.md").write_text(markdown(summary))
    return summary


#: The comparison that stands for each claim in the overview (all comparisons are listed below it).
HEADLINES: dict[str, str] = {
    "BEEM ≥ final exit": "beem-kd model: BEEM at 1.5× vs its final exit",
    "PCEE > PABEE": "weighted model, mean over 1–2×",
    "SWEET early exits > joint": "mean of exits 1–3",
    "COSEE curve > joint": "norm-energy, mean over 1–3×",
}


def overview(summary: dict[str, Any]) -> list[str]:
    """Markdown rows: one line per claim, one column per task, the headline comparison's verdict."""
    tasks = list(summary["tasks"])
    found = {
        (v["claim"], v["task"]): v for v in summary["verdicts"] if HEADLINES.get(v["claim"]) == v["point"]
    }
    lines = ["| claim | headline comparison | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for claim, point in HEADLINES.items():
        cells = []
        for task in tasks:
            v = found.get((claim, task))
            if v is None or v["delta"] is None:
                cells.append("–")
                continue
            word = "holds" if v["holds"] else "does not hold"
            sig = "" if v["significant"] else ", n.s."
            cells.append(f"{word} (Δ {v['delta']:+.3f}{sig})")
        lines.append(f"| {claim} | {point} | " + " | ".join(cells) + " |")
    return lines


def chosen_lr_section(chosen: dict[str, Any] | None) -> list[str]:
    """Markdown: the verdicts at each scheme's chosen learning rate (from benchmarks/parity.py's runs)."""
    if not chosen:
        return []
    task, setting = chosen["task"], chosen["setting"]
    lrs = ", ".join(f"{run} {lr:g}" for run, lr in chosen["lrs"].items())
    lines = [
        f"## Verdicts at each scheme's chosen learning rate ({task})",
        "",
        f"From `benchmarks/parity.py`'s runs (MiniLM-L6, {setting['train_size']} train examples, "
        f"{setting['epochs']:g} epochs, batch {setting['batch_size']}, max length {setting['max_length']}; "
        "the same setting as the sections below except that 1,000 further train rows are held out as the "
        "val split). Each scheme's lr was chosen from the grid 2e-5, 5e-5, 1e-4, 2e-4 by its max-prob "
        f"curve's val AUC over 1–3×, never on dev: {lrs}. Seeds {chosen['seeds']}; runs finished by "
        f"{chosen['finished']}.",
        "",
        *overview({"tasks": {task: None}, "verdicts": chosen["verdicts"]}),
        "",
        "| comparison | verdict |",
        "|---|---|",
    ]
    lines += [f"| {v['claim']}: {v['point']} | {v['verdict']} |" for v in chosen["verdicts"]]
    return [*lines, ""]


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# The papers' claims, tested on MiniLM-L6 (SST-2, MRPC, RTE)",
        "",
        "Generated by `benchmarks/claims.py` (see its docstring for the setting and the claims). Accuracy "
        "on the GLUE dev split; speed-up = layer-count (L·N / Σ exit layers), accuracy read off each "
        "policy's threshold sweep by linear interpolation; AUC = mean accuracy over 1–3×. "
        "'–': the curve does not reach that speed-up.",
        "",
    ]
    prov = summary.get("provenance") or {}
    if prov.get("finished"):
        lines += [
            "Commands: " + "; ".join(f"`{c}`" for c in prov["commands"]) + f". Runs finished "
            f"{prov['finished'][0]} – {prov['finished'][1]} on {'; '.join(prov['machines'])}.",
            "",
        ]
    lines += chosen_lr_section(summary.get("chosen_lr"))
    if summary["verdicts"]:
        lines += [
            "## Overview at lr 1e-4 for every scheme",
            "",
            "n.s.: the 95% paired-bootstrap interval of Δ covers 0.",
            "",
        ]
        lines += [*overview(summary), ""]
    for task, t in summary["tasks"].items():
        s = t["setting"]
        size = f"{s['train_size']} train examples"
        lines += [
            f"## {task}",
            "",
            f"{size}, {s['epochs']:g} epochs, batch {s['batch_size']}, lr {s['lr']}, max length "
            f"{s['max_length']}, length-grouped batches; dev {t['dev_size']} examples "
            f"(majority class: {t['majority_class']:.3f}).",
            "",
            "Per-exit accuracy:",
            "",
        ]
        runs = t["runs"]
        lines.append("| run | seeds | " + " | ".join(f"exit {i}" for i in range(1, 7)) + " | train s |")
        lines.append("|---|---|" + "---|" * 7)
        for run, a in runs.items():
            cells = {layer: v for layer, v in zip(a["exits"], a["per_exit"], strict=True)}
            row = " | ".join(_fmt(cells.get(layer)) for layer in range(1, 7))
            lines.append(f"| {run} | {len(a['seeds'])} | {row} | {a['train_seconds']:.0f} |")
        lines += ["", "Accuracy at 1.5× / 2× / 3× speed-up and AUC (1–3×), per scheme × policy:", ""]
        multi_exit = [r for r in runs if r != "single"]
        pols = list(next(iter(runs[r] for r in multi_exit))["policies"]) if multi_exit else []
        lines.append("| policy | " + " | ".join(multi_exit) + " |")
        lines.append("|---|" + "---|" * len(multi_exit))
        for pol in pols:
            cells = []
            for run in multi_exit:
                p = runs[run]["policies"][pol]
                cells.append(" / ".join(_fmt(p["at"][k]) for k in ("1.5", "2", "3")) + f" · {_fmt(p['auc'])}")
            lines.append(f"| {pol} | " + " | ".join(cells) + " |")
        finals = " | ".join(_fmt(runs[r]["final"]) for r in multi_exit)
        lines.append(f"| *final exit (1×)* | {finals} |")
        if "single" in runs:
            lines += [
                "",
                f"Single-exit baseline (one head after layer 6): **{runs['single']['final']:.3f}**.",
            ]
        lines += ["", f"![{task}](claims_{task}.png)", ""]
    lines += [
        "## Verdicts",
        "",
        "Δ = claimed-better side minus the other; 95% CI from a paired bootstrap over dev examples "
        "(dev-sample noise only, not seed noise).",
        "",
        "| task | claim | comparison | verdict |",
        "|---|---|---|---|",
    ]
    for v in summary["verdicts"]:
        lines.append(f"| {v['task']} | {v['claim']} | {v['point']} | {v['verdict']} |")
    return "\n".join(lines) + "\n"


def refresh_chosen_lr(out: Path) -> int:
    """Re-render claims.json/claims.md from the committed claims.json plus the chosen-lr verdicts."""
    chosen = out / CHOSEN_LR_FILE
    if not chosen.is_file():
        raise SystemExit(f"claims: no {chosen}; run benchmarks/parity.py (its report writes it) first")
    summary = json.loads((out / "claims.json").read_text())
    summary["chosen_lr"] = json.loads(chosen.read_text())
    (out / "claims.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "claims.md").write_text(markdown(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    p.add_argument(
        "--runs",
        nargs="*",
        default=DEFAULT_RUNS,
        choices=list(RUNS),
        help="default: all but multi-model and cosee-paper-sst2",
    )
    p.add_argument("--seeds", nargs="*", type=int, default=[42])
    p.add_argument("--epochs", type=float, default=None, help="override every task's epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--glue-dir", default=str(ROOT.parent.parent / "shared" / "data" / "glue"))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--summary-only", action="store_true", help="rebuild the table from finished runs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--chosen-lr-only",
        action="store_true",
        help=f"only refresh the chosen-lr section (from {CHOSEN_LR_FILE}, written by parity.py) in the "
        "committed claims.json/claims.md, without the runs' cached outputs",
    )
    args = p.parse_args(argv)
    if args.chosen_lr_only:
        return refresh_chosen_lr(Path(args.out))
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = Path(args.out)
    (out / "claims" / "runs").mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for seed in args.seeds:
            for task in args.tasks:
                for run in args.runs:
                    path = run_path(out, task, run, seed)
                    if path.exists():
                        print(f"skip {path.name} (done)", file=sys.stderr)
                        continue
                    print(f"== {task} {run} seed {seed}", file=sys.stderr)
                    rec = train_and_score(task, run, seed, args, out)
                    rec["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
                    rec["machine"] = (
                        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
                    )
                    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                    tmp.write_text(json.dumps(rec) + "\n")
                    os.replace(tmp, path)
                    accs = " ".join(f"{a:.3f}" for a in rec["per_exit"])
                    print(f"   per-exit dev accuracy {accs} ({rec['train_seconds']:.0f} s)", file=sys.stderr)
                    summarise(out)
    summary = summarise(out)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
