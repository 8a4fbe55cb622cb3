"""The report's plots (matplotlib, imported only when a plot is drawn).

Each function draws one PNG from a typed result and returns a :class:`PlotSummary` of what it drew
(legend entries, x-range, marked targets), so tests and callers can check a plot without reading pixels.
Policies whose curves coincide (e.g. threshold = maxprob = entropy on two classes) are drawn once, under
one legend entry naming them all.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .compare import Comparison
from .report import EvaluationResult, PolicyEvaluation

SPEEDUP_LABEL = "speed-up (L·N / Σ l(n))"
FULL_MODEL = "full model (final exit)"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class PlotSummary:
    """What a plot shows: ``legend`` labels, ``xlim``, the ``targets`` marked with vertical lines, the
    ``calibrated`` point (speed-up, score) if any, ``title``, ``ylabel`` and per-panel ``panels`` titles."""

    legend: list[str] = field(default_factory=list)
    xlim: tuple[float, float] | None = None
    targets: list[float] = field(default_factory=list)
    calibrated: tuple[float, float] | None = None
    title: str = ""
    ylabel: str = ""
    panels: list[str] = field(default_factory=list)


def curve_groups(policies: dict[str, PolicyEvaluation]) -> list[tuple[list[str], PolicyEvaluation]]:
    """Policies grouped by identical curves (same (speed-up, score) points), in first-seen order."""
    groups: dict[tuple[tuple[float, float], ...], tuple[list[str], PolicyEvaluation]] = {}
    for name, pol in policies.items():
        groups.setdefault(pol.curve.points(), ([], pol))[0].append(name)
    return list(groups.values())


def group_label(names: Sequence[str]) -> str:
    """``["threshold", "maxprob", "entropy"]`` -> ``"threshold = maxprob = entropy"``."""
    return " = ".join(names)


def x_range(targets: Sequence[float], hi: float = 3.0, extra: Sequence[float] = ()) -> tuple[float, float]:
    """The tables' speed-up range (1× to the largest target, at least ``hi``) with a small margin."""
    top = max([*targets, hi, *[v for v in extra if v is not None and math.isfinite(v)]])
    pad = 0.04 * (top - 1.0)
    return 1.0 - pad, top + pad


def _finite(values: Any) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _y_range(
    ax: Any, xs: list[np.ndarray], ys: list[np.ndarray], xlim: tuple[float, float], more: list
) -> None:
    """Fit the y-axis to what is visible inside ``xlim`` (points further right must not squash it)."""
    seen = [y[(x >= xlim[0]) & (x <= xlim[1])] for x, y in zip(xs, ys, strict=True)]
    values = np.concatenate([*seen, np.asarray([v for v in more if v is not None], dtype=float)])
    values = values[np.isfinite(values)]
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        pad = max(0.02 * (hi - lo), 1e-3)
        ax.set_ylim(lo - pad, hi + pad)


def _mark_targets(ax: Any, targets: Sequence[float], legend: bool = True) -> None:
    for i, t in enumerate(targets):
        label = "targets " + " / ".join(f"{v:g}×" for v in targets) if legend and i == 0 else None
        ax.axvline(t, color="grey", linestyle=":", linewidth=1, label=label)
        ax.text(t, 1.0, f"{t:g}×", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)


def plot_curves(result: EvaluationResult, path: Path, title: str) -> PlotSummary:
    """Speed–accuracy curves, one line per group of identical policies; final exit dashed; targets dotted;
    the calibrated setting starred. The x-axis spans the tables' range (1× to the largest target)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    cal = result.calibrated
    xlim = x_range(result.targets, result.auc_range[1], [cal.point.speedup] if cal else [])
    xs, ys = [], []
    for i, (names, pol) in enumerate(curve_groups(result.policies)):
        x, y = _finite(pol.curve.speedup), _finite(pol.curve.score)
        order = np.argsort(x)
        style = {"color": plt.cm.tab10(i % 10), "linestyle": ("-", "-.", ":")[i // 10 % 3]}
        ax.plot(
            x[order], y[order], marker=".", markersize=3, linewidth=1.2, label=group_label(names), **style
        )
        xs.append(x)
        ys.append(y)
    if result.final_score is not None:
        ax.axhline(result.final_score, color="black", linestyle="--", linewidth=1, label="final exit")
    _mark_targets(ax, result.targets)
    point = None
    if cal is not None:
        point = (cal.point.speedup, cal.point.score)
        target = cal.target_speedup
        against = f" vs {target:g}× target" if target is not None else ""
        name = cal.policy.get("name", "policy")
        label = f"calibrated {name}: {cal.point.speedup:.2f}×{against}"
        ax.plot(*point, marker="*", markersize=14, color="black", linestyle="none", label=label, zorder=5)
    ax.set_xlim(*xlim)
    _y_range(ax, xs, ys, xlim, [result.final_score, point[1] if point else None])
    ax.set_xlabel(SPEEDUP_LABEL)
    ax.set_ylabel(result.metric)
    ax.set_title(title, pad=14)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    legend = ax.get_legend_handles_labels()[1]
    _save(plt, fig, path)
    return PlotSummary(legend, xlim, list(result.targets), point, title, result.metric)


def plot_histograms(result: EvaluationResult, path: Path) -> PlotSummary:
    """Small multiples: how many inputs leave at each exit at each policy's setting nearest 2×
    (policies with the same histogram share a panel)."""
    plt = pyplot()
    groups: dict[tuple, list[str]] = {}
    for name, pol in result.policies.items():
        groups.setdefault((tuple(pol.near_2x.exit_counts), pol.near_2x.speedup), []).append(name)
    cols = min(4, max(1, len(groups)))
    rows = max(1, math.ceil(len(groups) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    labels = [str(layer) for layer in result.exits]
    titles = []
    for ax, ((counts, speed), names) in zip(axes.flat, groups.items(), strict=False):
        ax.bar(labels, counts, color="tab:blue")
        titles.append(f"{group_label(names)} ({speed:.2f}×)")
        ax.set_title(textwrap.fill(titles[-1], 34), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.supxlabel("exit layer", fontsize=8)
    fig.supylabel("inputs", fontsize=8)
    _save(plt, fig, path)
    return PlotSummary(panels=titles)


def plot_per_exit(result: EvaluationResult, path: Path) -> PlotSummary:
    """Each exit's own score against its layer."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    layers = [r.layer for r in result.per_exit]
    ax.plot(layers, _finite([r.score for r in result.per_exit]), marker="o")
    ax.set_xticks(layers)
    ax.set_xlabel("exit layer")
    ax.set_ylabel(result.metric)
    ax.set_title("per-exit scores")
    ax.grid(alpha=0.3)
    _save(plt, fig, path)
    return PlotSummary(title="per-exit scores", ylabel=result.metric)


def plot_compare(comparison: Comparison, path: Path) -> PlotSummary:
    """One panel per policy, every configuration's mean curve over seeds and its full-model score (dashed,
    same colour); targets dotted; one x-range for all panels."""
    plt = pyplot()
    confs = comparison.configurations
    ids = comparison.ids()
    names = [n for n in (confs[0].policies if confs else {}) if all(n in c.policies for c in confs)]
    targets = confs[0].targets if confs else []
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 1.2), squeeze=False, sharey=True)
    xlim = x_range(targets)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for ax, name in zip(axes.flat, names, strict=False):
        for i, c in enumerate(confs):
            x, y = c.policies[name].mean_curve
            style = {"color": plt.cm.tab10(i % 10), "linestyle": ("-", "-.", ":")[i // 10 % 3]}
            ax.plot(
                x, _finite(y), linewidth=1.3, label=f"{ids[c.label]}: {c.label} (n={len(c.runs)})", **style
            )
            if c.final.mean is not None:
                ax.axhline(
                    c.final.mean, color=style["color"], linestyle="--", linewidth=0.9, label=FULL_MODEL
                )
            xs.append(np.asarray(x, dtype=float))
            ys.append(_finite(y))
        _mark_targets(ax, targets, legend=False)
        ax.set_title(name, fontsize=9, pad=12)
        ax.set_xlim(*xlim)
        ax.set_xlabel(SPEEDUP_LABEL, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    _y_range(axes.flat[0], xs, ys, xlim, [c.final.mean for c in confs])
    metric = comparison.metric or "score"
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    where = " ".join(v for v in (comparison.task, comparison.split) if v) or "runs"
    title = f"{where}: {metric} against speed-up, mean over seeds per configuration"
    fig.suptitle(title, fontsize=10)
    handles, labels = _legend_entries(axes.flat[0])
    ncol = 1 if max(map(len, labels), default=0) > 45 else 2
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    legend_height = (math.ceil(len(labels) / ncol) * 0.2 + 0.1) / fig.get_figheight()
    fig.tight_layout(rect=(0, legend_height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return PlotSummary(labels, xlim, list(targets), None, title, metric, names)


def _legend_entries(ax: Any) -> tuple[list[Any], list[str]]:
    """The axis' legend entries with repeated labels (one "full model" line per configuration) kept once."""
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for handle, label in zip(handles, labels, strict=True):
        if label not in seen:
            seen[label] = handle
    if FULL_MODEL in seen:  # drawn in each configuration's colour: show it in black, last
        from matplotlib.lines import Line2D

        del seen[FULL_MODEL]
        seen[FULL_MODEL + ", in the configuration's colour"] = Line2D([], [], color="black", linestyle="--")
    return list(seen.values()), list(seen)


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight": a legend outside the axes stays in
    plt.close(fig)
