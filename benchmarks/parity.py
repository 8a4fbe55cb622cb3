"""Early exit against the plain fine-tune: does any configuration match it at 2×? (issue 12, item 6)

For each task × backbone: a plain fine-tune (one exit after the last layer) and the multi-exit schemes
``joint``, ``weighted``, ``beem-kd``, ``sweet``, ``cosee`` and ``two-stage`` (DeeBERT), each

- at its own learning rate, chosen on a validation split held out FROM TRAIN (never dev) from a grid
  (MiniLM-L6: 2e-5, 5e-5, 1e-4, 2e-4; MPNet: 2e-5, 3e-5, 5e-5) on the first seed: multi-exit schemes
  by the max-prob curve's AUC over 1–3× (mean accuracy along the curve), the plain fine-tune by its
  accuracy;
- without and with a teacher (KD from the plain fine-tune of the same seed to every exit; needs the
  ``teacher`` field of ``offramp.train``; the variants wait while it is missing).

Every run caches its exit outputs on val and dev; every policy (``claims.POLICIES``) is swept on both.
Dev accuracy at 1.5×/2×/3× layer-count speed-up (interpolated along the sweep, as the papers' tables)
and AUC. The best configuration at 2× (scheme × teacher × policy) is chosen on val (mean over seeds) and
compared on dev with the plain fine-tune (paired bootstrap over dev examples, 95% interval). An
ingredient table (first seed) shows which step closes how much of the gap: lr 1e-4 for every scheme
(the claims benchmark's setting) → lr chosen per scheme → + teacher.

Settings: SST-2: 8,000 train examples drawn per seed, 2 epochs, max length 64, val = 1,000 other train
examples; MRPC: full train less 400 val examples, 3 epochs, max length 128. Batch 32, length-grouped
batches, fixed epochs (no epoch selection), accuracy everywhere. Val rows are the same for every seed.

Resumable: each run writes ``parity/runs/<key>.json`` and is skipped when it exists; exit outputs go to
``parity/outputs/<key>.{val,dev}.npz`` (git-ignored) and plain fine-tunes (the teachers) to
``runs/parity/models/<key>/`` (git-ignored). Runs go in order of information: plain fine-tunes, the lr
grid of joint/weighted/beem-kd/two-stage, their teacher variants, more seeds, then sweet/cosee; MiniLM
before MPNet. ``parity.md``/``parity.json`` are rebuilt from whatever runs exist (``--report-only``),
with unfinished cells marked "…".

Run (CPU: about 3 min per MiniLM-L6 run on 2 idle cores, about 8× that for MPNet)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/parity.py --dry-run          # the plan, done or not
    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/parity.py --backbones minilm-l6 &
    .venv/bin/python benchmarks/parity.py --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from claims import BOOTSTRAP, POLICIES, TARGETS, Evidence, judge, score_outputs

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
MODELS = ROOT.parent / "runs" / "parity" / "models"
GLUE = ROOT.parent.parent / "shared" / "data" / "glue"
VAL_SEED = 0  # the val rows are the same for every seed

TASKS: dict[str, dict[str, Any]] = {
    "sst2": {"train_size": 8000, "val_size": 1000, "epochs": 2.0, "max_length": 64},
    "mrpc": {"train_size": None, "val_size": 400, "epochs": 3.0, "max_length": 128},
}
BACKBONES: dict[str, dict[str, Any]] = {
    "minilm-l6": {"lrs": [2e-5, 5e-5, 1e-4, 2e-4], "seeds": [42, 43, 44], "depth": 6},
    "mpnet-base": {"lrs": [2e-5, 3e-5, 5e-5], "seeds": [42], "depth": 12},
}
#: scheme name -> RunSpec keyword arguments (exits: every layer; ``plain``: the last layer only)
SCHEMES: dict[str, dict[str, Any]] = {
    "plain": {"scheme": "joint"},
    "joint": {"scheme": "joint"},
    "weighted": {"scheme": "weighted"},
    "beem-kd": {"scheme": "beem-kd"},
    "two-stage": {"scheme": "two-stage"},
    "sweet": {"scheme": "sweet"},
    # as in claims.py: COSEE's QNLI setting; its SST-2 one starves the middle exits in short runs
    "cosee": {"scheme": "cosee", "scheme_options": {"beta0": 1.0, "alpha": 0.01}},
}
FIRST_WAVE = ("joint", "weighted", "beem-kd", "two-stage")
SECOND_WAVE = ("sweet", "cosee")
CLAIMS_LR = 1e-4  # the claims benchmark's single learning rate
SELECT_POLICY = "maxprob"  # the lr of a multi-exit scheme: this policy's val AUC over 1–3×
PENDING = "…"


@dataclass(frozen=True)
class Run:
    """One training run. ``lr`` None: the lr is still to be chosen (its grid is unfinished)."""

    task: str
    backbone: str
    scheme: str
    lr: float | None
    teacher: bool
    seed: int

    @property
    def key(self) -> str:
        lr = "lr?" if self.lr is None else f"lr{self.lr:g}"
        return (
            f"{self.task}-{self.backbone}-{self.scheme}-{lr}-{'kd' if self.teacher else 'nokd'}-s{self.seed}"
        )

    @property
    def config(self) -> str:
        """The configuration name in the tables: scheme, ``+teacher`` when distilled."""
        return self.scheme + ("+teacher" if self.teacher else "")


# -------------------------------------------------------------------------------------------------
# The plan: which runs, in which order; learning rates chosen from finished runs
# -------------------------------------------------------------------------------------------------


def grid(args: argparse.Namespace, backbone: str) -> list[float]:
    return list(args.lrs or BACKBONES[backbone]["lrs"])


def seeds_of(args: argparse.Namespace, backbone: str) -> list[int]:
    return list(args.seeds or BACKBONES[backbone]["seeds"])


def selection_score(rec: dict[str, Any]) -> float:
    """What picks a run's lr on val: the plain fine-tune's accuracy, else the max-prob AUC over 1–3×."""
    val = rec["val"]
    if rec["scheme"] == "plain":
        return float(val["final"])
    auc = val["policies"][SELECT_POLICY]["auc"]
    return -math.inf if auc is None else float(auc)


def chosen_lr(
    records: dict[str, dict[str, Any]], args: argparse.Namespace, task: str, backbone: str, scheme: str
) -> float | None:
    """The grid lr with the best val score on the first seed (no teacher); None while unfinished."""
    seed = seeds_of(args, backbone)[0]
    found = []
    for lr in grid(args, backbone):
        rec = records.get(Run(task, backbone, scheme, lr, False, seed).key)
        if rec is None:
            return None
        found.append((selection_score(rec), -lr, lr))  # ties: the smaller lr
    return max(found)[2]


def plan(args: argparse.Namespace, records: dict[str, dict[str, Any]]) -> list[Run]:
    """Every run, most informative first; a run whose lr is not chosen yet has ``lr=None``."""
    runs: list[Run] = []
    for backbone in args.backbones:
        seeds = seeds_of(args, backbone)
        first, rest = seeds[0], seeds[1:]

        def at_chosen(task: str, scheme: str, teacher: bool, seed: int, backbone: str = backbone) -> Run:
            lr = chosen_lr(records, args, task, backbone, scheme)
            return Run(task, backbone, scheme, lr, teacher, seed)

        def wanted(scheme: str) -> bool:
            return scheme in args.schemes

        for task in args.tasks:  # plain fine-tunes: the grid, then the other seeds
            if wanted("plain"):
                runs += [Run(task, backbone, "plain", lr, False, first) for lr in grid(args, backbone)]
                runs += [at_chosen(task, "plain", False, s) for s in rest]
        for wave in (FIRST_WAVE, SECOND_WAVE):
            schemes = [s for s in wave if wanted(s)]
            for task in args.tasks:
                runs += [
                    Run(task, backbone, s, lr, False, first) for s in schemes for lr in grid(args, backbone)
                ]
            if args.teacher:
                runs += [at_chosen(t, s, True, first) for t in args.tasks for s in schemes]
            variants = (False, True) if args.teacher else (False,)
            runs += [
                at_chosen(t, s, v, seed)
                for seed in rest
                for t in args.tasks
                for s in schemes
                for v in variants
            ]
    return list(dict.fromkeys(runs))


def teacher_support() -> str | None:
    """Which of ``TrainConfig``/``RunSpec`` has the ``teacher`` field (None: not there yet)."""
    from offramp.train import RunSpec, TrainConfig

    for cls in (TrainConfig, RunSpec):
        if "teacher" in {f.name for f in dataclasses.fields(cls)}:
            return cls.__name__
    return None


def blocker(run: Run, records: dict[str, dict[str, Any]], args: argparse.Namespace) -> str | None:
    """Why ``run`` cannot start yet (None: it can)."""
    if run.lr is None:
        return "waits for its lr grid"
    if run.teacher:
        if teacher_support() is None:
            return "offramp.train has no `teacher` field yet"
        plain = Run(
            run.task,
            run.backbone,
            "plain",
            chosen_lr(records, args, run.task, run.backbone, "plain"),
            False,
            run.seed,
        )
        if plain.lr is None or plain.key not in records or not (Path(args.models) / plain.key).is_dir():
            return "waits for its teacher (the plain fine-tune of this seed at its chosen lr)"
    return None


def teacher_dir(run: Run, records: dict[str, dict[str, Any]], args: argparse.Namespace) -> Path:
    lr = chosen_lr(records, args, run.task, run.backbone, "plain")
    return Path(args.models) / Run(run.task, run.backbone, "plain", lr, False, run.seed).key


# -------------------------------------------------------------------------------------------------
# Training one run
# -------------------------------------------------------------------------------------------------


def run_path(out: Path, key: str) -> Path:
    return out / "parity" / "runs" / f"{key}.json"


def outputs_path(out: Path, key: str, split: str) -> Path:
    """Cached exit outputs of one run on ``split`` (val or dev); git-ignored, rebuilt by training."""
    return out / "parity" / "outputs" / f"{key}.{split}.npz"


def load_data(task: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (drawn with the seed for SST-2), val (held out from train, fixed rows), dev."""
    from offramp.data import load_glue, subsample, train_val_split

    setting = TASKS[task]
    pool, val = train_val_split(
        load_glue(task, args.glue_dir, "train"), args.val_size or setting["val_size"], seed=VAL_SEED
    )
    size = args.train_size or setting["train_size"]
    train = subsample(pool, size, seed=seed) if size else pool
    dev = load_glue(task, args.glue_dir, "dev")
    if args.eval_size:  # smoke tests only
        val, dev = subsample(val, args.eval_size, seed=0), subsample(dev, args.eval_size, seed=0)
    return {"train": train, "val": val, "dev": dev}


def train_and_score(run: Run, records: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Train one run, cache its val and dev exit outputs, sweep every policy on both; the run's record."""
    from offramp.evaluate import collect_exit_outputs
    from offramp.train import RunSpec, TrainConfig, build_and_train

    setting, data = TASKS[run.task], load_data(run.task, run.seed, args)
    options = dict(SCHEMES[run.scheme])
    extra: dict[str, dict[str, Any]] = {"TrainConfig": {}, "RunSpec": {}}
    if run.teacher:
        extra[teacher_support() or "RunSpec"]["teacher"] = str(teacher_dir(run, records, args))
    cfg = TrainConfig(
        epochs=args.epochs or setting["epochs"],
        batch_size=args.batch_size,
        lr=run.lr,
        max_length=setting["max_length"],
        seed=run.seed,
        group_by_length=True,
        progress=not args.no_progress,
        **extra["TrainConfig"],
    )
    exits = [BACKBONES[run.backbone]["depth"]] if run.scheme == "plain" else None
    spec = RunSpec(backbone=run.backbone, exits=exits, **options, **extra["RunSpec"])
    model_dir = Path(args.models) / run.key if run.scheme == "plain" else None
    start = time.perf_counter()
    model, _ = build_and_train(data["train"], None, model_dir, spec, cfg)
    train_seconds = time.perf_counter() - start
    scores = {}
    for split in ("val", "dev"):
        outputs = collect_exit_outputs(model, data[split], batch_size=128, max_length=setting["max_length"])
        path = outputs_path(Path(args.out), run.key, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        outputs.save(str(path))
        scores[split] = score_outputs(outputs)
    kd = {
        k: getattr(cfg if hasattr(cfg, k) else spec, k, None)
        for k in ("teacher", "kd_temperature", "kd_weight")
    }
    return {
        **dataclasses.asdict(run),
        "key": run.key,
        "config": run.config,
        "spec": options,
        "kd": kd if run.teacher else None,
        "sizes": {k: len(v) for k, v in data.items()},
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        **scores,
        "train_seconds": train_seconds,
        "threads": torch.get_num_threads(),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }


def load_records(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "parity" / "runs").glob("*.json"))}


# -------------------------------------------------------------------------------------------------
# Report: tables, the best configuration at 2×, the ingredients, parity.{md,json}
# -------------------------------------------------------------------------------------------------


def flat(recs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Records in claims.aggregate's shape (scores of ``split`` at the top level)."""
    return [{**r[split], "seed": r["seed"], "train_seconds": r["train_seconds"]} for r in recs]


def config_runs(records, args, task, backbone, scheme, teacher, seeds=None) -> list[dict[str, Any]]:
    """Finished records of one configuration at its chosen lr, over ``seeds`` (default: all)."""
    lr = chosen_lr(records, args, task, backbone, scheme)
    if lr is None:
        return []
    keys = [Run(task, backbone, scheme, lr, teacher, s).key for s in seeds or seeds_of(args, backbone)]
    return [records[k] for k in keys if k in records]


def at2(agg: dict[str, Any], policy: str) -> float | None:
    return agg["policies"][policy]["at"].get("2")


def pick_at_2x(groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Among configurations (name -> records) × policies: the best val mean at 2×; its dev mean."""
    from claims import aggregate

    best = None
    for name, recs in groups.items():
        if not recs or recs[0]["scheme"] == "plain":
            continue
        val, dev = aggregate(flat(recs, "val")), aggregate(flat(recs, "dev"))
        for pol in val["policies"]:
            v = at2(val, pol)
            if v is not None and (best is None or v > best["val"]):
                best = {
                    "config": f"{name} / {pol}",
                    "name": name,
                    "policy": pol,
                    "val": v,
                    "score": at2(dev, pol),
                    "seeds": dev["seeds"],
                    "lr": recs[0]["lr"],
                }
    return best


def bootstrap_vs_plain(out: Path, best: dict[str, Any], best_recs, plain_recs) -> dict[str, Any] | None:
    """Paired bootstrap over dev examples of best-at-2× minus the plain final exit, on common seeds."""
    from offramp.analysis import bootstrap_weights
    from offramp.evaluate import ExitOutputs

    seeds = sorted({r["seed"] for r in best_recs} & {r["seed"] for r in plain_recs})
    pick = {
        "best": [r for r in best_recs if r["seed"] in seeds],
        "plain": [r for r in plain_recs if r["seed"] in seeds],
    }
    paths = {
        k: [outputs_path(out, r["key"], "dev") for r in sorted(v, key=lambda r: r["seed"])]
        for k, v in pick.items()
    }
    if not seeds or not all(p.is_file() for ps in paths.values() for p in ps):
        return None
    ev = Evidence({k: [ExitOutputs.load(str(p)) for p in ps] for k, ps in paths.items()})
    n = len(ev.outputs["plain"][0].labels)
    w = np.vstack([np.ones((1, n)), bootstrap_weights(n, BOOTSTRAP, seed=0)])
    res = judge(ev.at_speedup("best", best["policy"], 2.0, w), ev.exit_accuracy("plain", -1, w), strict=False)
    return {"seeds": seeds, **res}


def ingredients(records, args, task, backbone, plain_first: float | None) -> list[dict[str, Any]]:
    """First seed, dev accuracy at 2× of the best config (chosen on val) as ingredients are added."""
    first = seeds_of(args, backbone)[0]
    multi = [s for s in SCHEMES if s != "plain"]

    def runs_at(lr_of, teacher) -> dict[str, list[dict[str, Any]]]:
        found = {}
        for s in multi:
            lr = lr_of(s)
            rec = records.get(Run(task, backbone, s, lr, teacher, first).key) if lr is not None else None
            found[s + ("+teacher" if teacher else "")] = [rec] if rec else []
        return found

    def chosen(s):
        return chosen_lr(records, args, task, backbone, s)

    steps = [
        (
            "every scheme at lr 1e-4, no teacher (claims' setting)",
            runs_at(lambda s: CLAIMS_LR if CLAIMS_LR in grid(args, backbone) else None, False),
        ),
        ("+ lr chosen per scheme on val", runs_at(chosen, False)),
        ("+ teacher (KD from the plain fine-tune), lr chosen", runs_at(chosen, True)),
    ]
    steps.append(("best of with / without teacher", {**steps[1][1], **steps[2][1]}))
    rows, prev = [], None
    for label, groups in steps:
        best = pick_at_2x(groups)
        missing = sum(1 for v in groups.values() if not v)
        score = best["score"] if best else None
        gap = None if score is None or plain_first is None else score - plain_first
        closed = None if gap is None or prev is None else gap - prev
        rows.append(
            {
                "step": label,
                "best": best and best["config"],
                "score": score,
                "gap": gap,
                "closed": closed,
                "missing_configs": missing,
            }
        )
        prev = gap if gap is not None else prev
    return rows


def section(records, args, out: Path, task: str, backbone: str, planned: list[Run]) -> dict[str, Any]:
    """Everything the report says about one task × backbone."""
    from claims import aggregate

    seeds = seeds_of(args, backbone)
    mine = [r for r in planned if r.task == task and r.backbone == backbone]
    done = sum(1 for r in mine if r.key in records)
    lr_grid = {
        s: {
            f"{lr:g}": (
                selection_score(rec)
                if (rec := records.get(Run(task, backbone, s, lr, False, seeds[0]).key))
                else None
            )
            for lr in grid(args, backbone)
        }
        for s in SCHEMES
    }
    groups = {
        s + ("+teacher" if t else ""): config_runs(records, args, task, backbone, s, t)
        for s in SCHEMES
        for t in (False, True)
        if not (s == "plain" and t)
    }
    configs = {}
    for name, recs in groups.items():
        if recs:
            dev = aggregate(flat(recs, "dev"))
            configs[name] = {
                "lr": recs[0]["lr"],
                "seeds": dev["seeds"],
                "final": dev["final"],
                "per_exit": dev["per_exit"],
                "train_seconds": dev["train_seconds"],
                "policies": dev["policies"] if name != "plain" else {},
            }
    plain_recs = groups["plain"]
    plain = configs.get("plain", {}).get("final")
    best = pick_at_2x(groups)
    test = bootstrap_vs_plain(out, best, groups[best["name"]], plain_recs) if best and plain_recs else None
    first_plain = next((r["dev"]["final"] for r in plain_recs if r["seed"] == seeds[0]), None)
    return {
        "runs_done": done,
        "runs_planned": len(mine),
        "complete": done == len(mine),
        "seeds": seeds,
        "chosen_lr": {s: chosen_lr(records, args, task, backbone, s) for s in SCHEMES},
        "lr_grid_val": lr_grid,
        "plain": plain,
        "plain_per_seed": {str(r["seed"]): r["dev"]["final"] for r in plain_recs},
        "best_at_2x": best and {k: best[k] for k in ("config", "score", "val", "seeds", "lr")},
        "delta_at_2x": None
        if best is None or best["score"] is None or plain is None
        else best["score"] - plain,
        "bootstrap": test,
        "ingredients": ingredients(records, args, task, backbone, first_plain),
        "configs": configs,
    }


def _fmt(v: float | None, digits: int = 3, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return PENDING
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def section_md(task: str, backbone: str, s: dict[str, Any]) -> list[str]:
    state = "complete" if s["complete"] else f"incomplete: {s['runs_done']} of {s['runs_planned']} runs done"
    lines = [f"## {task} · {backbone} ({state})", ""]
    best, delta = s["best_at_2x"], s["delta_at_2x"]
    plain_seeds = ", ".join(f"s{k} {v:.3f}" for k, v in s["plain_per_seed"].items())
    lines += [
        f"- Plain fine-tune (lr {s['chosen_lr']['plain'] or PENDING}): **{_fmt(s['plain'])}** "
        f"({plain_seeds or 'no runs yet'}).",
        "- Best early-exit configuration at 2× (chosen on val): "
        + (
            f"**{best['config']}** (lr {best['lr']:g}), dev **{_fmt(best['score'])}** over seeds "
            f"{best['seeds']}; Δ vs plain **{_fmt(delta, sign=True)}**"
            if best
            else PENDING
        ),
    ]
    if s["bootstrap"] and s["bootstrap"].get("ci"):
        b = s["bootstrap"]
        lines[-1] += (
            f" — paired bootstrap on seeds {b['seeds']}: Δ {b['delta']:+.3f}, "
            f"95% CI [{b['ci'][0]:+.3f}, {b['ci'][1]:+.3f}]."
        )
    lines += [
        "",
        "Which ingredient closes how much of the gap (first seed, dev accuracy at 2×, each row's best "
        "scheme × policy chosen on val; gap = row − plain fine-tune of the same seed):",
        "",
        "| step | best config | acc at 2× | gap to plain | closed by this step | configs missing |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["ingredients"]:
        lines.append(
            f"| {r['step']} | {r['best'] or PENDING} | {_fmt(r['score'])} | {_fmt(r['gap'], sign=True)} | "
            f"{_fmt(r['closed'], sign=True)} | {r['missing_configs']} |"
        )
    lrs = list(next(iter(s["lr_grid_val"].values())))
    lines += [
        "",
        f"lr grid, first seed, val score (plain: accuracy; others: {SELECT_POLICY} AUC over 1–3×); "
        "**bold** = chosen:",
        "",
        "| scheme | " + " | ".join(lrs) + " |",
        "|---|" + "---|" * len(lrs),
    ]
    for scheme, row in s["lr_grid_val"].items():
        chosen = s["chosen_lr"][scheme]
        cells = [
            (f"**{_fmt(v)}**" if chosen is not None and f"{chosen:g}" == lr else _fmt(v))
            for lr, v in row.items()
        ]
        lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    lines += policy_table(s["configs"])
    return lines + [""]


def policy_table(configs: dict[str, dict[str, Any]]) -> list[str]:
    """Dev accuracy at 1.5× / 2× / 3× and AUC (1–3×), mean over seeds, per policy × configuration."""
    multi = [c for c in configs if c != "plain"]
    if not multi:
        return ["", "No multi-exit run finished yet."]
    lines = [
        "",
        "Dev accuracy at 1.5× / 2× / 3× · AUC (1–3×), mean over seeds (at each config's chosen lr):",
        "",
        "| policy | "
        + " | ".join(f"{c} (lr {configs[c]['lr']:g}, {len(configs[c]['seeds'])} seeds)" for c in multi)
        + " |",
        "|---|" + "---|" * len(multi),
    ]
    for pol in configs[multi[0]]["policies"]:
        cells = []
        for c in multi:
            p = configs[c]["policies"][pol]
            cells.append(" / ".join(_fmt(p["at"].get(k)) for k in ("1.5", "2", "3")) + f" · {_fmt(p['auc'])}")
        lines.append(f"| {pol} | " + " | ".join(cells) + " |")
    lines.append("| *final exit (1×)* | " + " | ".join(_fmt(configs[c]["final"]) for c in multi) + " |")
    return lines


#: The commands behind the committed results (each skips the runs that already exist).
COMMANDS = (
    "OMP_NUM_THREADS=1 python benchmarks/parity.py --backbones minilm-l6 (run as parallel subsets, e.g. "
    "--tasks sst2 --schemes plain two-stage --teacher)",
    "OMP_NUM_THREADS=1 python benchmarks/parity.py --backbones mpnet-base",
    "python benchmarks/parity.py --report-only (this view: each scheme at its chosen lr)",
    "python benchmarks/parity.py --report-only --lrs 1e-4 --report-suffix _lr1e-4 (every scheme at lr 1e-4)",
)


#: claims.py run name -> this benchmark's scheme (the claims' verdicts read these runs)
CLAIMS_RUNS = {
    "joint": "joint",
    "weighted": "weighted",
    "beem-kd": "beem-kd",
    "sweet": "sweet",
    "cosee": "cosee",
}
CLAIMS_FILE = "claims_chosen_lr.json"


def claims_at_chosen_lrs(
    records, args, out: Path, task: str = "sst2", backbone: str = "minilm-l6"
) -> dict | None:
    """The claims benchmark's verdicts (``claims.verdicts``) on this benchmark's runs of ``task`` at each
    scheme's chosen lr, without teacher, on the seeds every scheme has; None until every lr is chosen."""
    from claims import verdicts

    from offramp.evaluate import ExitOutputs

    lrs = {run: chosen_lr(records, args, task, backbone, scheme) for run, scheme in CLAIMS_RUNS.items()}
    if any(lr is None for lr in lrs.values()):
        return None
    keys = {
        s: {r: Run(task, backbone, CLAIMS_RUNS[r], lrs[r], False, s).key for r in lrs}
        for s in seeds_of(args, backbone)
    }
    seeds = [
        s
        for s, ks in keys.items()
        if all(k in records and outputs_path(out, k, "dev").is_file() for k in ks.values())
    ]
    if not seeds:
        return None
    outputs = {r: [ExitOutputs.load(str(outputs_path(out, keys[s][r], "dev"))) for s in seeds] for r in lrs}
    ev = Evidence(outputs)
    first = records[keys[seeds[0]]["joint"]]
    return {
        "task": task,
        "backbone": backbone,
        "lrs": lrs,
        "seeds": seeds,
        "setting": {
            "train_size": first["sizes"]["train"],
            "epochs": first["epochs"],
            "max_length": first["max_length"],
            "batch_size": first["batch_size"],
        },
        "finished": max(records[k]["finished"] for ks in keys.values() for k in ks.values() if k in records),
        "verdicts": verdicts(task, ev, len(outputs["joint"][0].labels)),
    }


def report_args(args: argparse.Namespace) -> argparse.Namespace:
    """The report covers every task, backbone, scheme and teacher variant (grids and seeds as given)."""
    return argparse.Namespace(
        **{
            **vars(args),
            "tasks": list(TASKS),
            "backbones": list(BACKBONES),
            "schemes": list(SCHEMES),
            "teacher": True,
        }
    )


def report(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Rebuild parity.json and parity.md from the finished runs."""
    from offramp.io import write_json_atomic, write_text_atomic

    rargs = report_args(args)
    records = load_records(out)
    planned = plan(rargs, records)
    finished = sorted(r["finished"] for r in records.values())
    summary: dict[str, Any] = {
        "provenance": {
            "commands": COMMANDS,
            "this_report": "python benchmarks/parity.py " + " ".join(sys.argv[1:]),
            "finished": [finished[0], finished[-1]] if finished else None,
            "machines": sorted({r["machine"] for r in records.values()}),
            "threads": sorted({r["threads"] for r in records.values()}),
            "teacher_support": teacher_support(),
        },
        "settings": {
            "tasks": TASKS,
            "backbones": BACKBONES,
            "schemes": SCHEMES,
            "select_policy": SELECT_POLICY,
            "policies": POLICIES,
            "targets": list(TARGETS),
        },
        "tasks": {t: {b: section(records, rargs, out, t, b, planned) for b in BACKBONES} for t in TASKS},
    }
    chosen = claims_at_chosen_lrs(records, rargs, out) if len(grid(rargs, "minilm-l6")) > 1 else None
    if chosen is not None:  # read by claims.py, which puts these verdicts first in claims.md
        write_json_atomic(out / CLAIMS_FILE, chosen)
    name = f"parity{args.report_suffix}"
    write_json_atomic(out / f"{name}.json", summary)
    write_text_atomic(out / f"{name}.md", markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    prov = summary["provenance"]
    when = (
        f"runs finished {prov['finished'][0]} – {prov['finished'][1]}" if prov["finished"] else "no runs yet"
    )
    lines = [
        "# Early exit vs the plain fine-tune (parity benchmark)",
        "",
        "Generated by `benchmarks/parity.py` (its docstring has the setting). Dev accuracy (GLUE dev, never "
        "used for choices); lr per scheme and the best configuration are chosen on a val split held out "
        "from train. Speed-up = layer-count; accuracy at a speed-up read off each policy's threshold sweep "
        f"by interpolation; AUC = mean accuracy over 1–3×. '{PENDING}': not finished (or not reached).",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in prov["commands"]) + f". {when} on "
        f"{'; '.join(prov['machines']) or '–'} (torch threads {prov['threads']}, CPU shared with other "
        f"jobs). Teacher support in offramp.train: {prov['teacher_support'] or 'not yet'}. This report: "
        f"`{prov.get('this_report', '')}` (its --lrs/--seeds/--schemes decide what the tables include).",
        "",
        "## Summary: best at 2× vs plain",
        "",
        "| task | backbone | plain | best at 2× (config) | acc at 2× | Δ | 95% CI (bootstrap) | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, per in summary["tasks"].items():
        for backbone, s in per.items():
            b, boot = s["best_at_2x"], s["bootstrap"] or {}
            ci = f"[{boot['ci'][0]:+.3f}, {boot['ci'][1]:+.3f}]" if boot.get("ci") else PENDING
            lines.append(
                f"| {task} | {backbone} | {_fmt(s['plain'])} | {b['config'] if b else PENDING} | "
                f"{_fmt(b and b['score'])} | {_fmt(s['delta_at_2x'], sign=True)} | {ci} | "
                f"{s['runs_done']}/{s['runs_planned']} |"
            )
    lines.append("")
    for task, per in summary["tasks"].items():
        for backbone, s in per.items():
            lines += section_md(task, backbone, s)
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------
# CLI
# -------------------------------------------------------------------------------------------------


def print_plan(args: argparse.Namespace, out: Path) -> None:
    records = load_records(out)
    for run in plan(args, records):
        state = "done" if run.key in records else (blocker(run, records, args) or "to run")
        print(f"{run.key:60s} {state}")


def execute(args: argparse.Namespace, out: Path) -> None:
    """Train the planned runs in order, one at a time, re-planning after each (lrs get chosen)."""
    from offramp.io import write_json_atomic

    failed: set[str] = set()
    while True:
        records = load_records(out)
        todo = [r for r in plan(args, records) if r.key not in records and r.key not in failed]
        ready = [r for r in todo if blocker(r, records, args) is None]
        if not ready:
            for r in todo:
                print(f"not run: {r.key} ({blocker(r, records, args)})", file=sys.stderr)
            return
        run = ready[0]
        print(f"== {run.key}  [{len(todo)} left]", file=sys.stderr, flush=True)
        try:
            rec = train_and_score(run, records, args)
        except Exception:  # one broken run must not stop the benchmark: report it and go on
            traceback.print_exc()
            failed.add(run.key)
            continue
        write_json_atomic(run_path(out, run.key), rec)
        dev = rec["dev"]
        print(
            f"   dev per-exit {' '.join(f'{a:.3f}' for a in dev['per_exit'])}; val select "
            f"{selection_score(rec):.4f} ({rec['train_seconds']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        try:
            report(args, out)
        except Exception:
            traceback.print_exc()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    p.add_argument("--seeds", nargs="+", type=int, help="default: 42 43 44 for MiniLM, 42 for MPNet")
    p.add_argument("--lrs", nargs="+", type=float, help="the lr grid (default: per backbone, see docstring)")
    p.add_argument(
        "--teacher",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the teacher (KD) variants (default: yes)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the planned runs and their state, train nothing"
    )
    p.add_argument("--report-only", action="store_true", help="rebuild parity.{md,json} from finished runs")
    p.add_argument(
        "--report-suffix",
        default="",
        help="write parity<SUFFIX>.{md,json} (another view, e.g. --lrs 1e-4 --report-suffix _lr1e-4)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=float, help="override every task's epochs (smoke tests)")
    p.add_argument("--train-size", type=int, help="override the train size (smoke tests)")
    p.add_argument("--val-size", type=int, help="override the val size (smoke tests)")
    p.add_argument("--eval-size", type=int, help="score only this many val/dev rows (smoke tests)")
    p.add_argument("--glue-dir", default=str(GLUE))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--models", default=str(MODELS), help="where plain fine-tunes (the teachers) are saved")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = Path(args.out)
    if args.dry_run:
        print_plan(args, out)
        return 0
    if not args.report_only:
        execute(args, out)
    summary = report(args, out)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
