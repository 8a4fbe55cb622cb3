"""Reports for a person: Markdown (with the plots of ``plots.py``) written atomically into a folder.

:func:`write_report` renders an :class:`~offramp.report.EvaluationResult` (``report.md``, ``report.json``,
``curves.png``, ``histograms.png``, ``per_exit.png``); :func:`write_compare_report` a
:class:`~offramp.compare.Comparison` (``report.md``, ``compare.json``, ``compare.png``). The text helpers
(:func:`format_interval`, :func:`winner_sentence`) are shared with the command line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compare import Comparison, Configuration, Interval, Winner
from .io import atomic_dir
from .plots import curve_groups, group_label, plot_compare, plot_curves, plot_histograms, plot_per_exit
from .report import Calibrated, ClassReport, EvaluationResult


def num(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` places, None / NaN as '–'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table (and a blank line after it)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(num(c) for c in row) + " |" for row in rows]
    return lines + [""]


def format_interval(cell: Interval | None) -> str:
    """``0.8123 ± 0.0100``; ``0.8123 ± n/a (1 seed)`` when there is nothing to make an interval from."""
    if cell is None or cell.mean is None:
        return "–"
    if cell.n < 2:
        return f"{num(cell.mean)} ± n/a (1 seed)"
    return f"{num(cell.mean)} ± {num(cell.half)}"


# ---------------------------------------------------------------------------------------------------------
# One model: the evaluate report
# ---------------------------------------------------------------------------------------------------------


def render_markdown(result: EvaluationResult, title: str) -> str:
    """The report as Markdown, readable without the JSON."""
    metric = result.metric
    cascade = " (multi-model cascade: cost sums every member run)." if result.multi_model else "."
    md = [f"# {title}", ""]
    md += [
        f"{result.examples} examples, exits after layers {result.exits}, metric: **{metric}**{cascade}",
        "",
    ]
    if result.one_class_exits:
        which = ", ".join(f"layer {e.layer} (always {e.label!r})" for e in result.one_class_exits)
        md += [f"**Warning:** some exits predict one class for every input: {which}.", ""]
    md += ["## Per-exit scores", "", f"Each exit's {metric} when every input leaves there; the last row is"]
    md[-1] += " the full model."
    md += [""] + table(["exit", "layer", metric], [[r.exit, r.layer, r.score] for r in result.per_exit])
    if result.classes is not None:
        md += _classes_section(result.classes)
    md += _curves_section(result)
    md += _near_2x_section(result)
    md += _calibrated_section(result.calibrated, result)
    md += _analysis_section(result)
    return "\n".join(md)


def _classes_section(classes: ClassReport) -> list[str]:
    md = ["## Classes (final exit)", "", f"Macro-F1: **{num(classes.macro_f1)}**.", ""]
    md += table(
        ["class", "precision", "recall", "F1", "support"],
        [[c.label, c.precision, c.recall, c.f1, c.support] for c in classes.per_class],
    )
    md += ["Confusion matrix (rows: true class, columns: predicted class):", ""]
    md += table(
        ["true \\ predicted", *classes.labels],
        [[n, *row] for n, row in zip(classes.labels, classes.confusion, strict=True)],
    )
    return md


def _curves_section(result: EvaluationResult) -> list[str]:
    keys, (lo, hi), metric = result.target_keys, result.auc_range, result.metric
    md = [
        "## Speed–accuracy",
        "",
        f"{metric} of each policy at set speed-ups (L·N / Σ l(n)), linearly interpolated along its curve "
        f"(– = the curve does not reach it); AUC is the mean {metric} over speed-ups {lo:g}–{hi:g}×. "
        f"The full model scores {num(result.final_score)}. In the plot, dotted lines mark the targets"
        + (" and the star the calibrated setting." if result.calibrated else "."),
        "",
        "![speed-accuracy curves](curves.png)",
        "",
    ]
    md += table(
        ["policy", *[f"@{k}×" for k in keys], f"AUC {lo:g}–{hi:g}×"],
        [[n, *[p.at_speedup[k] for k in keys], p.auc] for n, p in result.policies.items()],
    )
    same = [group_label(names) for names, _ in curve_groups(result.policies) if len(names) > 1]
    if same:
        md += [f"Identical curves (drawn once): {'; '.join(same)}.", ""]
    return md


def _near_2x_section(result: EvaluationResult) -> list[str]:
    md = [
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
    for name, p in result.policies.items():
        pt = p.near_2x
        counts = " / ".join(str(c) for c in pt.exit_counts)
        rows.append(
            [name, pt.speedup, pt.saved_layers, pt.cost_fraction, pt.score, counts, pt.premature, pt.delayed]
        )
    return md + table(
        ["policy", "speed-up", "saved", "cost", result.metric, "exit counts", "premature", "delayed"], rows
    )


def calibrated_sentence(cal: Calibrated, metric: str, final_score: float | None) -> str:
    """How the saved policy does here, set against what it was calibrated for (and where)."""
    info = cal.calibration
    where = f"the {info['split']} split" if info.get("split") else "its validation split"
    rows = f" ({info['n']} rows)" if info.get("n") else ""
    there = f", where it gave {info['speedup']:.2f}×" if info.get("speedup") is not None else ""
    here = f"{cal.point.speedup:.2f}×"
    target = cal.target_speedup
    if target is not None:
        goal = f"Calibrated for a {target:g}× target on {where}{rows}{there}."
        here = f"{here} against a {target:g}× target"
    elif info.get("rule") == "accuracy" and info.get("max_drop") is not None:
        drop = f"{info['max_drop']:g} points"
        goal = f"Calibrated to stay within {drop} of the final exit on {where}{rows}{there}."
    elif info.get("rule") == "risk":
        kept = "" if info.get("certified") else " (none certified: the final exit is kept)"
        goal = (
            f"Calibrated by Learn-then-Test on {where}{rows}{there}: accuracy loss against the final exit "
            f"at most {info.get('max_drop'):g} points with probability ≥ {info.get('confidence'):g}{kept}."
        )
    elif info.get("rule") == "beem":
        goal = f"Calibrated by BEEM's rule on {where}{rows}{there}."
    else:
        goal = "No calibration record (the policy was set by hand)."
    return (
        f"{goal} On this split it gives **{here}** and {metric} {num(cal.point.score)} "
        f"(full model {num(final_score)})."
    )


def _calibrated_section(cal: Calibrated | None, result: EvaluationResult) -> list[str]:
    md = ["## Calibrated setting", ""]
    if cal is None:
        return md + ["The model has no calibrated policy (run `offramp calibrate`).", ""]
    params = json.dumps(cal.policy.get("params", {}))
    md += [
        f"The model's saved policy `{cal.policy.get('name')}` {params}, applied to this split: what "
        f"deploying it as calibrated gives. {calibrated_sentence(cal, result.metric, result.final_score)}",
        "",
    ]
    pt = cal.point
    counts = " / ".join(str(c) for c in pt.exit_counts)
    return md + table(
        ["speed-up", "saved", "cost", result.metric, "exit counts", "premature", "delayed"],
        [[pt.speedup, pt.saved_layers, pt.cost_fraction, pt.score, counts, pt.premature, pt.delayed]],
    )


def _analysis_section(result: EvaluationResult) -> list[str]:
    an = result.analysis
    md = ["## Analyses", ""]
    md += [
        f"Overthinking: **{num(an.overthinking)}**, the share of inputs some exit gets right but the "
        "last one gets wrong (what an oracle exit could recover).",
        "",
    ]
    if an.dis:
        md += [
            "Difficulty Inversion Score (CascadeBERT) per exit and signal: how well the signal ranks the "
            "exit's right predictions above its wrong ones (1 = perfect, 0.5 = random; – when the exit "
            "is all right or all wrong).",
            "",
        ]
        md += table(
            ["exit layer", *an.dis],
            [[layer, *[v[k] for v in an.dis.values()]] for k, layer in enumerate(result.exits)],
        )
    return md + ["Per-exit scores:", "", "![per-exit scores](per_exit.png)", ""]


def write_report(result: EvaluationResult, out_dir: str | os.PathLike[str], title: str) -> Path:
    """Write ``report.md``, ``report.json`` and the PNGs into ``out_dir`` atomically (temp + rename)."""
    with atomic_dir(out_dir) as tmp:
        if result.policies:
            plot_curves(result, tmp / "curves.png", title)
            plot_histograms(result, tmp / "histograms.png")
        plot_per_exit(result, tmp / "per_exit.png")
        (tmp / "report.md").write_text(render_markdown(result, title) + "\n")
        (tmp / "report.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------------------
# Several runs: the compare report
# ---------------------------------------------------------------------------------------------------------


def winner_sentence(w: Winner, ids: dict[str, str]) -> str:
    """``maxprob @2×: A beats B by 0.0123 (intervals overlap)``."""
    if w.overlap is None:
        verdict = "no interval: a configuration has 1 seed"
    else:
        verdict = "intervals overlap: not a clear win" if w.overlap else "intervals apart"
    return f"{w.policy} @{w.target}×: {ids[w.best]} beats {ids[w.runner_up]} by {w.margin:.4f} ({verdict})"


def render_compare_markdown(comparison: Comparison) -> str:
    """Mean ± 95% interval (Student t over seeds) per configuration, policy and target; the winners."""
    where = " ".join(v for v in (comparison.task, comparison.split) if v)
    ids = comparison.ids()
    md = [
        f"# Comparison over seeds{': ' + where if where else ''}",
        "",
        f"Each cell: mean ± half-width of the 95% Student-t interval over the seeds of one configuration, of "
        f"the {comparison.metric or 'score'} interpolated at that speed-up (n/a for a single seed: no "
        "interval). Runs that differ in anything but the seed are separate configurations.",
        "",
        "![mean curves](compare.png)",
        "",
    ]
    md += _winners_section(comparison, ids)
    for c in comparison.configurations:
        md += _configuration_section(c, ids[c.label])
    return "\n".join(md)


def _winners_section(comparison: Comparison, ids: dict[str, str]) -> list[str]:
    if not comparison.winners:
        return []
    md = ["## Which configuration wins", ""]
    md += [f"- **{ids[c.label]}**: {c.label} ({len(c.runs)} runs)" for c in comparison.configurations]
    md += ["", *[f"- {winner_sentence(w, ids)}" for w in comparison.winners], ""]
    return md


def _configuration_section(c: Configuration, cid: str) -> list[str]:
    md = [f"## {cid}: {c.label}", ""]
    md += [f"{len(c.runs)} runs, seeds {c.seeds}; full model {format_interval(c.final)}.", ""]
    keys = [f"{t:g}" for t in c.targets]
    rows = []
    for name, p in c.policies.items():
        rows.append([name, *[format_interval(p.at_speedup[k]) for k in keys], format_interval(p.auc)])
    return md + table(["policy", *[f"@{k}×" for k in keys], "AUC"], rows)


def write_compare_report(comparison: Comparison, out_dir: str | os.PathLike[str]) -> Path:
    """``report.md`` + ``compare.png`` + ``compare.json`` in ``out_dir``, atomically."""
    with atomic_dir(out_dir) as tmp:
        plot_compare(comparison, tmp / "compare.png")
        (tmp / "report.md").write_text(render_compare_markdown(comparison) + "\n")
        (tmp / "compare.json").write_text(json.dumps(comparison.to_json(), indent=2) + "\n")
    return Path(out_dir)
