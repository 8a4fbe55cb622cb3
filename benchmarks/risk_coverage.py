"""Coverage of the guaranteed calibration (``calibrate --max-drop D --confidence C``), and label-free 2x.

Issue 12, items 4 and 5. On the dev split of SST-2 and MRPC (cached per-exit outputs of a trained
MiniLM-L6 multi-exit model), repeat ``--splits`` random halvings of dev into a calibration half and a
held-out half: calibrate the maxprob threshold on the first half by Learn-then-Test (the same functions
``offramp.calibrate`` runs; the first split is checked against :func:`offramp.calibrate.calibrate`
itself), apply it to the held-out half and measure the realised accuracy drop against the final exit.
Coverage = share of splits whose realised drop is <= D; it should be >= C. The naive rule "the fastest
setting whose empirical drop on the calibration half is <= D" is run on the same splits for comparison.

Label-free: ``calibrate --unlabeled`` with a 2.0x target on SST-2 dev *inputs* (no labels), for maxprob,
entropy and patience; the realised layer-count speed-up on dev must be within ±5% of 2.0. Also on
random halves (calibrate on one half's inputs, measure on the other's), and once through the real CLI.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/risk_coverage.py \\
        --sst2-model /tmp/risk_models/sst2 --mrpc-model /tmp/risk_models/mrpc
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offramp.calibrate import calibrate
from offramp.data import default_glue_dir, load_glue
from offramp.evaluate import ExitOutputs, cached_exit_outputs
from offramp.io import write_json_atomic, write_text_atomic
from offramp.metrics import speedup_ratio
from offramp.model import MultiExitModel
from offramp.policies import Policy, get_policy, policy_from_config
from offramp.risk import harm, learn_then_test
from offramp.simulate import axis_value, pick_index, simulate, sweep

RESULTS = Path(__file__).resolve().parent / "results"
DROPS = (0.01, 0.02, 0.05)  # accuracy fractions (the CLI takes points: 1, 2, 5)
LEVELS = (0.9, 0.95)
METHODS = ("binomial", "hoeffding-bentkus")
GRID = 512  # calibrate()'s default grid size


@dataclass
class Cell:
    """One (task, rule, D, C, method) over all splits."""

    task: str
    rule: str  # "ltt" or "naive"
    max_drop: float
    confidence: float | None
    method: str | None
    drops: list[float] = field(default_factory=list)  # realised accuracy drop on the held-out half
    harms: list[float] = field(default_factory=list)  # realised controlled risk on the held-out half
    dev_harms: list[float] = field(default_factory=list)  # controlled risk on all of dev (the population)
    speedups: list[float] = field(default_factory=list)  # layer-count speed-up on the held-out half
    certified: list[bool] = field(default_factory=list)
    tested: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        drops = np.asarray(self.drops)
        return {
            "task": self.task,
            "rule": self.rule,
            "max_drop": self.max_drop,
            "confidence": self.confidence,
            "method": self.method,
            "splits": int(drops.size),
            "coverage": float((drops <= self.max_drop + 1e-12).mean()),
            "risk_coverage": float((np.asarray(self.harms) <= self.max_drop + 1e-12).mean()),
            "dev_risk_coverage": float((np.asarray(self.dev_harms) <= self.max_drop + 1e-12).mean()),
            "mean_drop": float(drops.mean()),
            "p95_drop": float(np.quantile(drops, 0.95)),
            "mean_speedup": float(np.mean(self.speedups)),
            "certified_share": float(np.mean(self.certified)) if self.certified else None,
            "mean_tested": float(np.mean(self.tested)) if self.tested else None,
        }


def dev_outputs(model_dir: str, task: str, cache_dir: Path) -> ExitOutputs:
    """The model's per-exit outputs on the task's dev split (cached in ``cache_dir``)."""
    model = MultiExitModel.load(model_dir).eval()
    data = load_glue(task, default_glue_dir(), "dev")
    cache = cache_dir / f"{task}_dev_outputs.npz"
    outputs, hit = cached_exit_outputs(model, model_dir, data, cache, batch_size=64)
    print(f"{task}: dev outputs {'from cache' if hit else 'computed'}: {outputs.logits.shape}", flush=True)
    return outputs


def model_summary(model_dir: str) -> str:
    """How the model folder was trained, from what it records."""
    config = json.loads((Path(model_dir) / "offramp.json").read_text())
    info = config.get("info") or {}
    train = (info.get("train") or {}).get("config") or {}
    scheme = (info.get("scheme") or {}).get("name")
    return (
        f"{model_dir}: scheme {scheme}, {info.get('train_size') or 'all'} train rows, "
        f"{train.get('epochs')} epoch(s), lr {train.get('lr')}, max_length {train.get('max_length')}"
    )


def subset(outputs: ExitOutputs, rows: np.ndarray) -> ExitOutputs:
    labels = None if outputs.labels is None else outputs.labels[rows]
    return ExitOutputs(outputs.logits[:, rows], labels, outputs.exits)


def realised(outputs: ExitOutputs, policy: Policy) -> tuple[float, float, float]:
    """Accuracy drop against the final exit, controlled risk, and layer-count speed-up of ``policy``."""
    sim = simulate(policy, outputs.logits)
    final = outputs.logits[-1].argmax(-1)
    drop = float((final == outputs.labels).mean() - (sim.prediction[0] == outputs.labels).mean())
    risk = float(harm(sim.prediction[0], final, outputs.labels).mean())
    speed = float(speedup_ratio(outputs.costs.layers(sim.exit_slot[0]), outputs.costs.depth))
    return drop, risk, speed


def policy_at(policy: Policy, thresholds: np.ndarray, idx: int | None, num_exits: int) -> Policy:
    """The grid setting ``idx`` of ``policy``; None: the final exit, as calibrate falls back to."""
    if idx is None:
        return get_policy("budget", k=num_exits)
    return policy.with_threshold(axis_value(policy, float(thresholds[idx])))


def one_split(outputs: ExitOutputs, rows: tuple[np.ndarray, np.ndarray], cells: dict, check: bool) -> None:
    """Calibrate every cell on the first half of ``rows``, measure on the second."""
    cal, held = subset(outputs, rows[0]), subset(outputs, rows[1])
    pol = get_policy("maxprob")
    swept = sweep(pol, cal, grid_size=GRID)
    final = cal.logits[-1].argmax(-1)
    losses = harm(swept.prediction, final, cal.labels).sum(1)
    accuracy = (swept.prediction == cal.labels[None, :]).mean(1)
    n, k = len(cal.labels), len(cal.exits)
    on_held = sweep(pol, held, thresholds=swept.thresholds)  # every grid setting on the held-out half
    held_final = held.logits[-1].argmax(-1)
    held_drop = (held_final == held.labels).mean() - (on_held.prediction == held.labels[None, :]).mean(1)
    held_risk = harm(on_held.prediction, held_final, held.labels).mean(1)
    for key, cell in cells.items():
        if cell.rule == "ltt":
            control = learn_then_test(losses, n, swept.speedup, cell.max_drop, cell.confidence, cell.method)
            idx = control.index
            cell.certified.append(idx is not None)
            cell.tested.append(control.tested)
            if check:  # the shipped calibrate() takes the same setting
                got = calibrate(cal, "maxprob", max_drop=100 * cell.max_drop, confidence=cell.confidence,
                                risk_test=cell.method, task=key[0])  # fmt: skip
                want = policy_at(pol, swept.thresholds, idx, k).to_config()["params"]
                assert got.to_config()["params"] == want, (key, got.to_config())
        else:
            ok = (final == cal.labels).mean() - accuracy <= cell.max_drop + 1e-12
            idx = pick_index(ok, swept.speedup, accuracy)
        if idx is None:  # the final exit
            cell.drops.append(0.0), cell.harms.append(0.0), cell.dev_harms.append(0.0)
            cell.speedups.append(1.0)
        else:
            cell.drops.append(float(held_drop[idx]))
            cell.harms.append(float(held_risk[idx]))
            cell.dev_harms.append(
                float((losses[idx] + held_risk[idx] * len(held.labels)) / len(outputs.labels))
            )
            cell.speedups.append(float(on_held.speedup[idx]))


def coverage(task: str, outputs: ExitOutputs, splits: int, seed: int) -> list[dict[str, Any]]:
    cells: dict[tuple, Cell] = {}
    for d in DROPS:
        for c in LEVELS:
            for m in METHODS:
                cells[(task, "ltt", d, c, m)] = Cell(task, "ltt", d, c, m)
        cells[(task, "naive", d, None, None)] = Cell(task, "naive", d, None, None)
    rng = np.random.default_rng(seed)
    n = outputs.logits.shape[1]
    start = time.time()
    for s in range(splits):
        perm = rng.permutation(n)
        one_split(outputs, (np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])), cells, check=s < 2)
        if (s + 1) % 100 == 0:
            print(f"{task}: {s + 1}/{splits} splits, {time.time() - start:.0f} s", flush=True)
    return [cell.summary() for cell in cells.values()]


def label_free(outputs: ExitOutputs, splits: int, seed: int) -> list[dict[str, Any]]:
    """2.0x targets calibrated on inputs only: on all of dev, and on halves measured on the other half."""
    rows = []
    bare = ExitOutputs(outputs.logits, None, outputs.exits)
    rng = np.random.default_rng(seed)
    n = outputs.logits.shape[1]
    halves = [rng.permutation(n) for _ in range(splits)]
    for name in ("maxprob", "entropy", "patience"):
        result = calibrate(bare, name, target_speedup=2.0, unlabeled=True, split="sst2 dev inputs")
        drop, _, speed = realised(outputs, result.policy)
        held = []
        for perm in halves:
            a, b = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
            got = calibrate(subset(bare, a), name, target_speedup=2.0, unlabeled=True)
            held.append(realised(subset(outputs, b), got.policy)[2])
        held_arr = np.asarray(held)
        rows.append({
            "policy": name,
            "chosen": result.policy.to_config()["params"],
            "dev_speedup": speed,
            "dev_within_5pct": bool(abs(speed / 2.0 - 1) <= 0.05),
            "dev_accuracy_drop": drop,
            "halves": int(held_arr.size),
            "halves_mean_speedup": float(held_arr.mean()),
            "halves_min_speedup": float(held_arr.min()),
            "halves_max_speedup": float(held_arr.max()),
            "halves_within_5pct": float((np.abs(held_arr / 2.0 - 1) <= 0.05).mean()),
        })  # fmt: skip
        print(f"label-free {name}: dev {speed:.3f}x, halves mean {held_arr.mean():.3f}x", flush=True)
    return rows


def label_free_cli(model_dir: str, outputs: ExitOutputs, workdir: Path) -> dict[str, Any]:
    """``offramp calibrate MODEL --unlabeled dev.txt --target-speedup 2.0 --dry-run``, then measured."""
    from offramp.cli import main

    texts = workdir / "sst2_dev_inputs.txt"
    dev = load_glue("sst2", default_glue_dir(), "dev")
    texts.write_text("".join(t[0].replace("\t", " ") + "\n" for t in dev.texts), encoding="utf-8")
    argv = ["calibrate", model_dir, "--unlabeled", str(texts), "--target-speedup", "2.0",
            "--policy", "maxprob", "--dry-run", "--no-progress"]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0, code
    config = json.loads(out.getvalue())
    drop, _, speed = realised(outputs, policy_from_config(config))
    command = "offramp " + " ".join(argv).replace(str(texts), "sst2_dev_inputs.txt")
    return {"command": command, "params": config["params"], "dev_speedup": speed, "dev_accuracy_drop": drop}


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def coverage_table(rows: list[dict[str, Any]]) -> list[str]:
    md = ["| task | rule | D | C | p-values | coverage (drop ≤ D) | risk ≤ D | dev risk ≤ D | mean drop | "
          "p95 drop | mean speed-up | certified | mean tested |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ok = "" if r["confidence"] is None else (" ✅" if r["coverage"] >= r["confidence"] else " ❌")
        md.append(
            f"| {r['task']} | {r['rule']} | {r['max_drop']:g} | {_fmt(r['confidence'], 'g')} | "
            f"{r['method'] or '–'} | {r['coverage']:.3f}{ok} | {r['risk_coverage']:.3f} | "
            f"{r['dev_risk_coverage']:.3f} | "
            f"{100 * r['mean_drop']:.2f} pt | {100 * r['p95_drop']:.2f} pt | {r['mean_speedup']:.2f}x | "
            f"{_fmt(r['certified_share'], '.2f')} | {_fmt(r['mean_tested'], '.0f')} |"
        )
    return md


def label_free_table(rows: list[dict[str, Any]]) -> list[str]:
    md = ["| policy | chosen | speed-up on dev | within ±5% | accuracy drop on dev | halves: mean (min–max) "
          "| halves within ±5% |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        chosen = json.dumps({k: v for k, v in r["chosen"].items() if k not in ("ensemble", "tolerance")})
        md.append(
            f"| {r['policy']} | `{chosen}` | {r['dev_speedup']:.3f}x | "
            f"{'yes' if r['dev_within_5pct'] else 'no'} "
            f"| {100 * r['dev_accuracy_drop']:.2f} pt | {r['halves_mean_speedup']:.3f}x "
            f"({r['halves_min_speedup']:.2f}–{r['halves_max_speedup']:.2f}) | {r['halves_within_5pct']:.2f} |"
        )
    return md


def render(report: dict[str, Any]) -> str:
    ltt = [r for r in report["coverage"] if r["rule"] == "ltt"]
    held = all(r["coverage"] >= r["confidence"] for r in ltt)
    cli = report.get("label_free_cli")
    md = [
        "# Guaranteed thresholds (Learn-then-Test): coverage, and label-free 2x calibration",
        "",
        f"Run {report['date']} on {report['machine']}. Command:",
        "",
        f"    {report['command']}",
        "",
        "Models (trained once for this benchmark, MiniLM-L6, joint scheme, every layer an exit):",
        "",
        *[
            f"- {t}: `{c}`; final-exit dev accuracy {a:.4f} on {n} dev rows"
            for t, (c, a, n) in report["models"].items()
        ],  # fmt: skip
        "",
        "## Guaranteed calibration: coverage over random calibration/held-out splits",
        "",
        f"{report['splits']} random halvings of each dev split. On the calibration half, "
        "`offramp calibrate --max-drop D --confidence C` (maxprob, its 512-value grid) picks the fastest "
        "setting certified by fixed-sequence Learn-then-Test from the slowest setting; the controlled risk "
        "is P(early-exit prediction wrong AND final exit right), which bounds the accuracy drop against the "
        "final exit. The pick is applied to the held-out half. *Coverage* = share of splits whose realised "
        "accuracy drop on the held-out half is ≤ D (must be ≥ C). *risk ≤ D*: the same for the controlled "
        "risk on the held-out half, a finite-sample estimate that scatters around the true risk (a setting "
        "whose true risk sits just under D exceeds D on half of the held-out draws), so it is not bound to "
        "reach C; *dev risk ≤ D*: the controlled risk on all of dev, the population both halves are drawn "
        "from (without replacement), which is what the guarantee is about. Speed-ups are layer-count "
        "speed-ups on the held-out half (1.00x where nothing was certified and the final exit is kept). "
        "*naive* = the fastest setting whose empirical accuracy drop on the calibration half is ≤ D. With "
        "500 splits a coverage has a Monte-Carlo standard error of about 0.01.",
        "",
        *coverage_table(report["coverage"]),
        "",
        f"**Verdict:** coverage ≥ C in {'every' if held else 'NOT every'} guaranteed cell "
        f"({sum(r['coverage'] >= r['confidence'] for r in ltt)}/{len(ltt)}).",
        "",
        "Reading it: where nothing can be certified (MRPC at D = 0.01: even a setting with no harm at all "
        "has p = 0.99^204 = 0.13 > δ on 204 calibration rows) the final exit is kept, 1.00x. Hoeffding–"
        "Bentkus p-values are e × the binomial tail here, so HB at C = 0.9 often takes the same setting as "
        "the binomial test at C = 0.95. The controlled risk counts only the inputs early exit breaks, so "
        "the realised accuracy drop is usually well below it (early exit also repairs some inputs). The "
        "naive rule covers about half the time on SST-2. The MRPC model is weak (1,200 train rows, 1 "
        "epoch: its final exit is barely above the majority class, 0.684), so all its exits mostly agree "
        "and early exit is nearly free there; it checks coverage, not a realistic MRPC trade-off.",
        "",
        "## label-free calibration",
        "",
        "`calibrate --unlabeled` with `--target-speedup 2.0` on the SST-2 dev inputs (no labels read), then "
        "the realised layer-count speed-up on SST-2 dev (must lie in 1.90–2.10x). *halves*: calibrated on "
        "the inputs of a random half of dev and measured on the other half "
        f"({report['label_free'][0]['halves']} splits), i.e. on inputs it never saw.",
        "",
        *label_free_table(report["label_free"]),
        "",
    ]
    md += [
        "Patience's threshold is an integer (t = 1 exits after two agreeing exits; t = 2 is slower than "
        "2x here), so no setting lands near 2.0x: the slowest one reaching the target is taken, as "
        "documented. The threshold policies land within ±5% on dev and, calibrated on one half's inputs, "
        "within ±5% on the other half in about 95% of the splits.",
        "",
    ]
    if cli:
        md += [f"Through the command line: `{cli['command']}` chose `{json.dumps(cli['params'])}`, which "
               f"gives **{cli['dev_speedup']:.3f}x** on SST-2 dev (accuracy drop "
               f"{100 * cli['dev_accuracy_drop']:.2f} points).", ""]  # fmt: skip
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sst2-model", default="/tmp/risk_models/sst2")
    p.add_argument("--mrpc-model", default="/tmp/risk_models/mrpc")
    p.add_argument("--splits", type=int, default=500)
    p.add_argument("--label-free-splits", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="/tmp/risk_models", help="where dev outputs are cached")
    p.add_argument("--out", default=str(RESULTS / "risk_coverage"))
    p.add_argument("--render-only", action="store_true", help="rewrite the .md from the saved .json")
    args = p.parse_args(argv)
    if args.render_only:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        write_text_atomic(Path(args.out).with_suffix(".md"), render(saved))
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    report: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/risk_coverage.py " + " ".join(sys.argv[1:]),
        "splits": args.splits,
        "models": {},
        "coverage": [],
    }
    outputs = {}
    for task, model_dir in (("sst2", args.sst2_model), ("mrpc", args.mrpc_model)):
        outputs[task] = out = dev_outputs(model_dir, task, Path(args.cache_dir))
        accuracy = float((out.logits[-1].argmax(-1) == out.labels).mean())
        report["models"][task] = (model_summary(model_dir), accuracy, len(out.labels))
        report["coverage"] += coverage(task, out, args.splits, args.seed)
    report["label_free"] = label_free(outputs["sst2"], args.label_free_splits, args.seed)
    report["label_free_cli"] = label_free_cli(args.sst2_model, outputs["sst2"], Path(args.cache_dir))
    out_path = Path(args.out)
    write_json_atomic(out_path.with_suffix(".json"), report)
    write_text_atomic(out_path.with_suffix(".md"), render(report))
    print(f"wrote {out_path.with_suffix('.md')} and .json")
    ltt = [r for r in report["coverage"] if r["rule"] == "ltt"]
    return 0 if all(r["coverage"] >= r["confidence"] for r in ltt) else 1


if __name__ == "__main__":
    raise SystemExit(main())
