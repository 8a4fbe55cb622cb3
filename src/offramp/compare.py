"""Comparing evaluated runs: group them by configuration, aggregate over seeds, say which one wins.

:func:`load_run` reads an evaluate JSON and the model config next to it; :func:`compare_runs` groups runs
whose configurations differ only in seed (any other differing setting — scheme, exits, max length,
learning rate, epochs, ... — makes a separate configuration) and returns a :class:`Comparison`: per
configuration and policy the mean ± 95% Student-t interval over seeds at each target speed-up, the AUC, a
mean curve, and per policy and target the winning configuration and whether its interval overlaps the
runner-up's. Rendering lives in ``render.py`` and ``plots.py``.
"""

from __future__ import annotations

import json
import os
import string
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import interpolate_at, mean_interval
from .report import TARGETS, jsonable, target_key

#: Config keys (at any depth) that do not define a configuration: the seed, timings, bookkeeping, and the
#: calibrated policy (chosen per run, after training).
IGNORED_KEYS = frozenset(
    {
        "seed",
        "policy",
        "train_seconds",
        "seconds",
        "progress",
        "save_every",
        "checkpoint_dir",
        "keep_checkpoints",
        "stop_after",
        "eval_batch_size",
        "resumed",
        "resumed_from",
        "format_version",
        "created",
        # results of training, not settings: they differ from seed to seed
        "stages",
        "best_val_score",
        "total_steps",
        "epochs_run",
    }
)
#: Settings shown in every label (the rest only where configurations differ).
LABEL_KEYS = ("scheme.name", "backbone", "exits", "train_size")


@dataclass
class Run:
    """One evaluated model: the evaluate JSON (``eval``) and its model config (None when not found)."""

    path: str
    eval: dict[str, Any]
    config: dict[str, Any] | None

    @property
    def seed(self) -> Any:
        return ((self.config or {}).get("info") or {}).get("seed")

    def settings(self) -> dict[str, Any]:
        """Everything that defines the configuration, flattened to dotted keys (the seed left out)."""
        if self.config is None:
            return {"run": self.path}
        flat = _flatten(self.config)
        for key in ("task", "split"):
            flat[key] = self.eval.get(key)
        return flat


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"info": {"scheme": {"name": "x"}}}`` -> ``{"scheme.name": "x"}``: dotted keys, the ``info.``,
    ``info.train.`` and ``info.train.config.`` prefixes dropped so each setting has one short name;
    :data:`IGNORED_KEYS` left out."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in IGNORED_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            out |= _flatten(item, f"{name}.")
        else:
            out[_short(name)] = item
    return out


def _short(key: str) -> str:
    for prefix in ("info.train.config.", "info.train.", "info."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def load_run(path: str | os.PathLike[str]) -> Run:
    """An evaluate JSON (a file, or the one ``eval_*.json`` in a model folder) plus its model config.

    ``config`` is the model's ``offramp.json`` / ``cascade.json`` (looked for in the JSON's ``model_dir``,
    then next to the JSON; None when not found).
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("eval_*.json"))
        if len(found) != 1:
            what = "no eval_*.json" if not found else f"{len(found)} eval_*.json files; pass one"
            raise FileNotFoundError(f"{str(p)!r} holds {what}")
        p = found[0]
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(p)!r} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "policies" not in data:
        raise ValueError(f"{str(p)!r} has no 'policies' section; re-run `offramp evaluate` to add it")
    config = None
    for folder in (Path(data.get("model_dir") or p.parent), p.parent):
        for name in ("offramp.json", "cascade.json"):
            if (folder / name).is_file():
                config = json.loads((folder / name).read_text())
                break
        if config is not None:
            break
    return Run(str(p), data, config)


# ---------------------------------------------------------------------------------------------------------
# Typed results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Interval:
    """Mean and half-width of the 95% Student-t interval over ``values`` (half 0 for one value)."""

    mean: float | None
    half: float | None
    values: list[float | None] = field(default_factory=list)

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Interval:
        mean, half = mean_interval([np.nan if v is None else float(v) for v in values])
        return cls(*jsonable([mean, half]), values=list(values))

    @property
    def n(self) -> int:
        """How many finite values the interval rests on."""
        return sum(v is not None and np.isfinite(v) for v in self.values)

    def overlaps(self, other: Interval) -> bool | None:
        """Whether the two intervals overlap; None when either rests on fewer than two values."""
        if self.n < 2 or other.n < 2 or None in (self.mean, self.half, other.mean, other.half):
            return None
        return abs(self.mean - other.mean) <= self.half + other.half  # type: ignore[operator]

    def to_json(self, with_values: bool = True) -> dict[str, Any]:
        out = {"mean": self.mean, "half": self.half}
        return jsonable(out | {"values": self.values} if with_values else out)


@dataclass
class PolicySummary:
    """One policy over a configuration's seeds: score at each target, AUC, mean curve."""

    at_speedup: dict[str, Interval]
    auc: Interval
    mean_curve: tuple[np.ndarray, np.ndarray]

    def to_json(self) -> dict[str, Any]:
        return {
            "at_speedup": {k: v.to_json() for k, v in self.at_speedup.items()},
            "auc": self.auc.to_json(with_values=False),
            "mean_curve": jsonable({"speedup": self.mean_curve[0], "score": self.mean_curve[1]}),
        }


@dataclass
class Configuration:
    """Runs that differ only in seed: ``settings`` (flattened config), ``label`` (what tells it apart)."""

    label: str
    runs: list[str]
    seeds: list[Any]
    settings: dict[str, Any]
    final: Interval
    policies: dict[str, PolicySummary]
    targets: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "runs": list(self.runs),
            "seeds": jsonable(self.seeds),
            "settings": jsonable(self.settings),
            "final": jsonable([self.final.mean, self.final.half]),
            "policies": {n: p.to_json() for n, p in self.policies.items()},
            "targets": list(self.targets),
        }


@dataclass
class Winner:
    """At one policy and target: the best configuration, the runner-up, the gap, and whether their
    intervals overlap (None: a configuration has a single seed, so no interval)."""

    policy: str
    target: str
    best: str
    runner_up: str
    margin: float
    overlap: bool | None

    def to_json(self) -> dict[str, Any]:
        return jsonable(dict(self.__dict__))


@dataclass
class Comparison:
    """Configurations side by side; ``metric``, ``task`` and ``split`` as evaluated (None when mixed)."""

    configurations: list[Configuration]
    winners: list[Winner]
    metric: str | None
    task: str | None
    split: str | None

    def ids(self) -> dict[str, str]:
        """A short id per configuration label, in order: A, B, C, ... (AA, AB, ... past 26)."""
        letters = string.ascii_uppercase
        n = len(self.configurations)
        ids = [letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26] for i in range(n)]
        return {c.label: i for c, i in zip(self.configurations, ids, strict=True)}

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "task": self.task,
            "split": self.split,
            "configurations": [c.to_json() for c in self.configurations],
            "winners": [w.to_json() for w in self.winners],
        }


# ---------------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------------


def compare_runs(runs: Sequence[Run], points: int = 50) -> Comparison:
    """Group runs by configuration and give mean ± 95% interval over seeds per policy and target.

    Also a mean curve per configuration and policy: each run's curve interpolated onto a common
    speed-up grid (from 1× to the largest speed-up every run reaches, at most the largest target or 3×),
    then averaged. Warns when a configuration holds one seed twice (the same run given twice?).
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run.settings(), sort_keys=True, default=str), []).append(run)
    labels = _labels([members[0].settings() for members in groups.values()])
    configurations = [
        _configuration(label, members, points) for label, members in zip(labels, groups.values(), strict=True)
    ]
    return Comparison(
        configurations=configurations,
        winners=winners(configurations),
        metric=_common(r.eval.get("metric") for r in runs),
        task=_common(r.eval.get("task") for r in runs),
        split=_common(r.eval.get("split") for r in runs),
    )


def _common(values: Any) -> Any:
    found = set(values)
    return found.pop() if len(found) == 1 else None


def _labels(settings: list[dict[str, Any]]) -> list[str]:
    """A label per configuration: scheme, backbone, exits, training size, then every setting that differs."""
    keys = sorted({k for s in settings for k in s})
    differing = [
        k
        for k in keys
        if k not in LABEL_KEYS and len({json.dumps(s.get(k), default=str) for s in settings}) > 1
    ]
    return [_label(s, differing) for s in settings]


def _label(settings: dict[str, Any], differing: Sequence[str]) -> str:
    if set(settings) == {"run"}:  # no model config found: the run's folder name
        return Path(settings["run"]).parent.name or settings["run"]
    s = settings
    head = f"{s.get('scheme.name', '?')} {s.get('backbone')} exits={s.get('exits')} n={s.get('train_size')}"
    extra = [f"{k.removeprefix('scheme.')}={s.get(k)}" for k in differing]
    return " ".join([head, *extra])


def _configuration(label: str, members: list[Run], points: int) -> Configuration:
    seeds = [r.seed for r in members]
    repeated = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
    if repeated:
        warnings.warn(
            f"configuration {label!r} holds seed(s) {repeated} more than once "
            f"({', '.join(r.path for r in members)}); they are counted as separate runs",
            stacklevel=3,
        )
    evals = [r.eval for r in members]
    targets = evals[0].get("targets") or list(TARGETS)
    names = [n for n in evals[0]["policies"] if all(n in e["policies"] for e in evals)]
    upper = max([*targets, 3.0])
    return Configuration(
        label=label,
        runs=[r.path for r in members],
        seeds=seeds,
        settings=members[0].settings(),
        final=Interval.of([(e.get("final") or {}).get("score", e.get("final_score")) for e in evals]),
        policies={n: _summarise([e["policies"][n] for e in evals], targets, upper, points) for n in names},
        targets=list(targets),
    )


def _summarise(
    pols: list[dict[str, Any]], targets: Sequence[float], upper: float, points: int
) -> PolicySummary:
    """One policy's JSON entries over a configuration's runs -> intervals and the mean curve."""
    at = {target_key(t): Interval.of([p["at_speedup"].get(target_key(t)) for p in pols]) for t in targets}
    curves = [
        (
            np.array([np.nan if v is None else v for v in p["curve"]["speedup"]], dtype=float),
            np.array([np.nan if v is None else v for v in p["curve"]["score"]], dtype=float),
        )
        for p in pols
    ]
    reach = min(float(np.nanmax(x)) if np.isfinite(x).any() else 1.0 for x, _ in curves)
    grid = np.linspace(1.0, max(1.0, min(reach, upper)), points)
    ys = np.array([interpolate_at(x, y, grid) for x, y in curves])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a grid point no run reaches: NaN, not a warning
        mean = np.nanmean(ys, axis=0)
    return PolicySummary(at, Interval.of([p["auc"] for p in pols]), (grid, mean))


def winners(configurations: Sequence[Configuration]) -> list[Winner]:
    """Per policy (shared by all configurations) and target: the best mean and its runner-up."""
    if len(configurations) < 2:
        return []
    first = configurations[0]
    names = [n for n in first.policies if all(n in c.policies for c in configurations)]
    keys = [target_key(t) for t in first.targets]
    out = []
    for name in names:
        for key in keys:
            cells = [(c.policies[name].at_speedup.get(key), c.label) for c in configurations]
            ranked = sorted(
                ((cell, label) for cell, label in cells if cell is not None and cell.mean is not None),
                key=lambda item: -item[0].mean,  # type: ignore[operator]
            )
            if len(ranked) < 2:
                continue
            (best, best_label), (second, second_label) = ranked[0], ranked[1]
            margin = float(best.mean - second.mean)  # type: ignore[operator]
            out.append(Winner(name, key, best_label, second_label, margin, best.overlaps(second)))
    return out
