"""Speed–accuracy reports (offramp.report) on synthetic exit outputs, plus `compare` end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from offramp.analysis import curve_auc, exit_failure_rates, interpolate_at, mean_interval, overthinking_rate
from offramp.cli import main
from offramp.compare import compare_runs, load_run
from offramp.data import default_glue_dir
from offramp.evaluate import ExitOutputs
from offramp.policies import get_policy, regression_policies
from offramp.render import write_compare_report, write_report
from offramp.report import EvaluationResult, evaluate_policies, jsonable, select_policies
from offramp.simulate import sweep

EXITS = [2, 4, 6, 8]


def synthetic(n: int = 300, seed: int = 0, confidence: bool = False) -> ExitOutputs:
    """K = 4 exits whose accuracy rises with depth; right predictions get larger margins."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = np.zeros((4, n, 2), np.float32)
    for k in range(4):
        right = rng.random(n) < 0.55 + 0.12 * k
        pred = np.where(right, labels, 1 - labels)
        logits[k, np.arange(n), pred] = rng.random(n) * (1 + k) * (0.5 + right)
    conf = rng.normal(size=(4, n)).astype(np.float32) if confidence else None
    return ExitOutputs(logits, labels, list(EXITS), conf)


@pytest.fixture(scope="module")
def outputs() -> ExitOutputs:
    return synthetic()


@pytest.fixture(scope="module")
def typed(outputs: ExitOutputs) -> EvaluationResult:
    return evaluate_policies(
        outputs, "sst2", False, grid_size=60, calibrated_policy={"name": "maxprob", "params": {"tau": 0.7}}
    )


@pytest.fixture(scope="module")
def result(typed: EvaluationResult) -> dict:
    return typed.to_json()


def test_structure_is_json_ready_and_skips_learned(result: dict) -> None:
    json.dumps(result, allow_nan=False)
    assert result["exits"] == EXITS and result["metric"] == "accuracy" and result["examples"] == 300
    assert "pcee-v2" not in result["policies"] and "learned" not in result["policies"]
    assert {"budget", "maxprob", "patience", "pcee", "beem"} <= set(result["policies"])
    for pol in result["policies"].values():
        assert set(pol) == {"curve", "at_speedup", "auc", "near_2x"}
        assert set(pol["at_speedup"]) == {"1.5", "2", "3"}
        assert len(pol["curve"]["speedup"]) == len(pol["curve"]["score"]) == len(pol["curve"]["threshold"])
        assert sum(pol["near_2x"]["exit_counts"]) == 300
    assert set(result["analysis"]["dis"]) == {"maxprob", "entropy", "norm_energy"}
    assert all(len(v) == 4 for v in result["analysis"]["dis"].values())


def test_budget_values_match_direct_calls(outputs: ExitOutputs, result: dict) -> None:
    budget = result["policies"]["budget"]
    acc = (outputs.logits.argmax(-1) == outputs.labels[None]).mean(1)
    for k in range(1, 5):  # budget k: every input leaves at exit k, speed-up K/k here (layers 2k of 8)
        i = budget["curve"]["threshold"].index(k)
        assert budget["curve"]["speedup"][i] == pytest.approx(4 / k, abs=0)
        assert budget["curve"]["saved_layers"][i] == pytest.approx(1 - k / 4)
        assert budget["curve"]["score"][i] == pytest.approx(acc[k - 1])
    assert budget["at_speedup"]["2"] == pytest.approx(acc[1])
    # 1.5x lies a quarter of the way from budget 3 (4/3x) to budget 2 (2x) along the curve.
    assert budget["at_speedup"]["1.5"] == pytest.approx(acc[2] + 0.25 * (acc[1] - acc[2]))
    near = budget["near_2x"]
    assert near["speedup"] == 2.0 and near["exit_counts"] == [0, 300, 0, 0] and near["score"] == acc[1]
    correct = outputs.logits.argmax(-1) == outputs.labels[None]
    rates = exit_failure_rates(np.full(300, 1), correct)
    assert near["premature"] == pytest.approx(rates["premature"])
    assert result["analysis"]["overthinking"] == pytest.approx(overthinking_rate(correct))
    assert [r["score"] for r in result["per_exit"]] == pytest.approx(acc)


def test_threshold_policy_matches_sweep(outputs: ExitOutputs, result: dict) -> None:
    direct = sweep(get_policy("maxprob"), outputs, task="sst2", grid_size=60)
    pol = result["policies"]["maxprob"]
    assert pol["curve"]["score"] == pytest.approx(direct.score)
    assert pol["curve"]["speedup"] == pytest.approx(direct.speedup)
    want = interpolate_at(direct.speedup, direct.score, [1.5, 2.0, 3.0])
    assert [pol["at_speedup"][k] for k in ("1.5", "2", "3")] == pytest.approx(want.tolist())
    assert pol["auc"] == pytest.approx(curve_auc(direct.speedup, direct.score, 1.0, 3.0))


def test_calibrated_setting(result: dict) -> None:
    cal = result["calibrated"]
    assert cal["policy"]["name"] == "maxprob" and sum(cal["exit_counts"]) == 300
    assert cal["speedup"] >= 1.0 and 0.0 <= cal["score"] <= 1.0
    assert cal["cost_fraction"] == pytest.approx(1 / cal["speedup"])


def test_nan_becomes_null_and_unreachable_targets_are_null(outputs: ExitOutputs) -> None:
    assert jsonable({"a": float("nan"), "b": np.float32(np.inf), "c": np.arange(2)}) == {
        "a": None,
        "b": None,
        "c": [0, 1],
    }
    res = evaluate_policies(outputs, "sst2", False, policies=["budget"], targets=(2.0, 5.0)).to_json()
    assert res["policies"]["budget"]["at_speedup"]["5"] is None
    # An exit that is always right has no DIS: null, not NaN.
    perfect = ExitOutputs(outputs.logits.copy(), outputs.labels, EXITS)
    perfect.logits[-1] = np.eye(2, dtype=np.float32)[outputs.labels] * 3
    res = evaluate_policies(perfect, "sst2", False, policies=["maxprob"], grid_size=20).to_json()
    assert res["analysis"]["dis"]["maxprob"][-1] is None
    json.dumps(res, allow_nan=False)


def test_learned_and_regression_selection() -> None:
    res = evaluate_policies(
        synthetic(120, confidence=True), "sst2", False, policies=["pcee*", "learned"]
    ).to_json()
    assert set(res["policies"]) == {"pcee", "pcee-v1", "pcee-v2", "learned"}
    assert "learned" in res["analysis"]["dis"]
    assert set(select_policies(None, regression=True)) <= set(regression_policies())
    with pytest.raises(ValueError, match="no policy matches"):
        select_policies(["nosuch*"])
    rng = np.random.default_rng(1)
    reg = ExitOutputs(rng.normal(size=(4, 80, 1)).astype(np.float32), rng.normal(size=80), EXITS)
    res = evaluate_policies(reg, "stsb", True, grid_size=20).to_json()
    assert set(res["policies"]) <= set(regression_policies()) and res["metric"] == "pearson"
    assert res["analysis"] == {"dis": {}, "overthinking": None}


def test_write_report(typed: EvaluationResult, tmp_path: Path) -> None:
    result = typed
    out = write_report(result, tmp_path / "rep", "synthetic")
    md = (out / "report.md").read_text()
    for heading in (
        "Per-exit scores",
        "Speed–accuracy",
        "Exits at about 2×",
        "Calibrated setting",
        "Analyses",
    ):
        assert f"## {heading}" in md
    assert "| budget |" in md and "Difficulty Inversion" in md and "Overthinking" in md
    for png in ("curves.png", "histograms.png", "per_exit.png"):
        assert f"({png})" in md
        assert (out / png).stat().st_size > 1000
    assert json.loads((out / "report.json").read_text())["exits"] == EXITS
    write_report(result, out, "again")  # replaces an existing report
    assert "# again" in (out / "report.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _fake_run(folder: Path, seed: int, scheme: str = "joint") -> Path:
    """A model folder with an offramp.json and an evaluate JSON holding a policies section."""
    folder.mkdir(parents=True)
    info = {"scheme": {"name": scheme}, "train_size": 64, "seed": seed}
    config = {"backbone": "minilm-l6", "exits": EXITS, "learned_exit": False, "info": info}
    (folder / "offramp.json").write_text(json.dumps(config))
    res = evaluate_policies(
        synthetic(200, seed=seed), "sst2", False, policies=["budget", "maxprob"]
    ).to_json()
    payload = {"model_dir": str(folder), "task": "sst2", "split": "dev", "final": {"score": 0.9}, **res}
    (folder / "eval_sst2_dev.json").write_text(json.dumps(payload))
    return folder


def test_compare_aggregates_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _fake_run(tmp_path / "s1", 1), _fake_run(tmp_path / "s2", 2)
    other = _fake_run(tmp_path / "sweet", 1, scheme="sweet")
    runs = [load_run(a), load_run(b / "eval_sst2_dev.json"), load_run(other)]
    result = compare_runs(runs).to_json()
    confs = {c["label"].split()[0]: c for c in result["configurations"]}
    assert set(confs) == {"joint", "sweet"} and confs["joint"]["seeds"] == [1, 2]
    vals = [r.eval["policies"]["maxprob"]["at_speedup"]["2"] for r in runs[:2]]
    cell = confs["joint"]["policies"]["maxprob"]["at_speedup"]["2"]
    mean, half = mean_interval(vals)
    assert cell["mean"] == pytest.approx(mean) and cell["half"] == pytest.approx(half) and half > 0
    assert confs["sweet"]["policies"]["maxprob"]["at_speedup"]["2"]["half"] == 0.0
    assert math.isclose(confs["joint"]["policies"]["maxprob"]["mean_curve"]["speedup"][0], 1.0)
    out = write_compare_report(compare_runs(runs), tmp_path / "cmp")
    assert "± " in (out / "report.md").read_text() and (out / "compare.png").stat().st_size > 1000

    assert main(["compare", str(a), str(b), "--json", str(tmp_path / "c.json")]) == 0
    assert "maxprob" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "c.json").read_text())["configurations"]) == 1
    assert main(["compare", str(tmp_path)]) == 2  # no eval JSON in that folder: a one-line error


def test_evaluate_cli_writes_policies_cache_and_report(
    minilm_sst2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = (default_glue_dir() / "SST-2" / "dev.tsv").read_text().splitlines()
    data = tmp_path / "dev40.tsv"
    data.write_text("\n".join(rows[:41]) + "\n")
    model_dir = tmp_path / "model"  # a copy: evaluate caches its exit outputs in the model folder
    shutil.copytree(minilm_sst2_dir, model_dir)
    args = ["evaluate", str(model_dir), "--data-file", str(data), "--task", "sst2", "--split", "dev40"]
    out = tmp_path / "e.json"
    common = ["--json", str(out), "--no-progress", "--grid-size", "30"]
    assert main([*args, *common, "--policies", "budget,max*,pcee", "--report", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "AUC" in printed and "maxprob" in printed
    report = json.loads(out.read_text())
    assert set(report["policies"]) == {"budget", "maxprob", "pcee"} and report["calibrated"] is None
    assert report["examples"] == 40 and report["cached_outputs"] is False and "dis" in report["analysis"]
    assert (model_dir / "exit_outputs_sst2_dev40.npz").is_file()
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "curves.png").stat().st_size
    assert main([*args, *common]) == 0  # second run reuses the cached outputs
    assert json.loads(out.read_text())["cached_outputs"] is True
    cache = model_dir / "exit_outputs_sst2_dev40.npz"
    first = ExitOutputs.load(str(cache)).logits
    # Another file with as many rows under the same name: the cache is stale and must not be reused.
    data.write_text("\n".join(rows[:1] + rows[41:81]) + "\n")
    assert main([*args, *common]) == 0
    again = json.loads(out.read_text())
    assert again["cached_outputs"] is False
    assert not np.allclose(ExitOutputs.load(str(cache)).logits[:, 1:], first[:, 1:])
    assert "recomputing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Plots: merged identical curves, target marks, the calibrated point, one x-range
# ---------------------------------------------------------------------------------------------------------


def test_curves_plot_merges_identical_policies_and_marks_targets(
    typed: EvaluationResult, tmp_path: Path
) -> None:
    from offramp.plots import curve_groups, plot_curves

    # threshold and maxprob are one policy under two names: identical arrays, one legend entry.
    groups = {tuple(names) for names, _ in curve_groups(typed.policies)}
    assert ("threshold", "maxprob") in groups
    shown = plot_curves(typed, tmp_path / "c.png", "synthetic")
    assert "threshold = maxprob" in shown.legend
    assert "threshold" not in shown.legend and "maxprob" not in shown.legend
    # every policy appears in exactly one legend entry
    named = [n for label in shown.legend for n in label.split(" = ")]
    assert all(named.count(p) == 1 for p in typed.policies)
    assert shown.targets == [1.5, 2.0, 3.0] and "targets 1.5× / 2× / 3×" in shown.legend
    assert shown.xlim is not None and shown.xlim[0] < 1.0 < 3.0 < shown.xlim[1] < 3.2  # the tables' range
    cal = typed.calibrated
    assert cal is not None and shown.calibrated == (cal.point.speedup, cal.point.score)
    assert any(label.startswith("calibrated maxprob: ") for label in shown.legend)
    assert shown.ylabel == "accuracy" and (tmp_path / "c.png").stat().st_size > 1000


def test_curves_plot_names_the_calibration_target_and_widens_for_a_far_point(
    outputs: ExitOutputs, tmp_path: Path
) -> None:
    from offramp.plots import plot_curves

    policy = {
        "name": "maxprob",
        "params": {"tau": 0.5},  # every input leaves at exit 1: 4x
        "calibration": {"rule": "speedup", "target_speedup": 2.0},
    }
    res = evaluate_policies(
        outputs, "sst2", False, policies=["maxprob"], grid_size=20, calibrated_policy=policy
    )
    assert res.calibrated is not None and res.calibrated.point.speedup > 3.2
    shown = plot_curves(res, tmp_path / "c.png", "far")
    assert f"calibrated maxprob: {res.calibrated.point.speedup:.2f}× vs 2× target" in shown.legend
    assert shown.xlim is not None and shown.xlim[1] > res.calibrated.point.speedup


def test_calibrated_section_sets_speedup_against_target(outputs: ExitOutputs) -> None:
    from offramp.render import render_markdown

    policy = {
        "name": "maxprob",
        "params": {"tau": 0.7},
        "calibration": {
            "rule": "speedup",
            "target_speedup": 2.0,
            "split": "validation",
            "n": 90,
            "speedup": 2.01,
        },
    }
    res = evaluate_policies(
        outputs, "sst2", False, policies=["maxprob"], grid_size=20, calibrated_policy=policy
    )
    md = render_markdown(res, "t")
    speed = res.calibrated.point.speedup  # type: ignore[union-attr]
    assert f"**{speed:.2f}× against a 2× target**" in md
    assert "Calibrated for a 2× target on the validation split (90 rows), where it gave 2.01×." in md
    assert res.to_json()["calibrated"]["policy"]["calibration"]["target_speedup"] == 2.0


# ---------------------------------------------------------------------------------------------------------
# Many classes, collapsed exits
# ---------------------------------------------------------------------------------------------------------


def three_classes(n: int = 240, seed: int = 3) -> ExitOutputs:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(3, n, 3)).astype(np.float32)
    logits[np.arange(3)[:, None], np.arange(n)[None, :], labels[None, :]] += np.array([0.5, 1.5, 3.0])[
        :, None
    ]
    return ExitOutputs(logits, labels, [2, 4, 6])


def test_many_class_metrics_in_json_and_report(tmp_path: Path) -> None:
    from sklearn.metrics import confusion_matrix, f1_score

    from offramp.render import render_markdown

    out = three_classes()
    names = ["entailment", "neutral", "contradiction"]
    res = evaluate_policies(out, None, False, policies=["maxprob"], grid_size=20, label_names=names)
    final = out.logits[-1].argmax(-1)
    assert res.classes is not None and res.classes.labels == names
    assert res.classes.macro_f1 == pytest.approx(f1_score(out.labels, final, average="macro"))
    assert res.classes.confusion == confusion_matrix(out.labels, final).tolist()
    assert [c.support for c in res.classes.per_class] == np.bincount(out.labels, minlength=3).tolist()
    js = res.to_json()
    json.dumps(js, allow_nan=False)
    assert js["classes"]["per_class"][1]["label"] == "neutral" and len(js["classes"]["confusion"]) == 3
    md = render_markdown(res, "mnli-like")
    assert (
        "## Classes (final exit)" in md
        and "| true \\ predicted | entailment | neutral | contradiction |" in md
    )
    # two classes: no class section
    two = evaluate_policies(synthetic(60), "sst2", False, policies=["budget"])
    assert two.classes is None and two.to_json()["classes"] is None
    assert "## Classes" not in render_markdown(two, "t")


def test_warns_when_an_exit_predicts_one_class(outputs: ExitOutputs) -> None:
    stuck = ExitOutputs(outputs.logits.copy(), outputs.labels, EXITS)
    stuck.logits[0] = np.array([0.0, 2.0], dtype=np.float32)  # exit 1 always says class 1
    with pytest.warns(
        UserWarning, match=r"1 of 4 exits predict one class for every input \(layer 2 → 'pos'\)"
    ):
        res = evaluate_policies(stuck, "sst2", False, policies=["budget"], label_names=["neg", "pos"])
    assert [(e.exit, e.layer, e.label) for e in res.one_class_exits] == [(1, 2, "pos")]
    assert res.to_json()["one_class_exits"] == [{"exit": 1, "layer": 2, "label": "pos"}]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healthy exits: no warning
        assert evaluate_policies(outputs, "sst2", False, policies=["budget"]).one_class_exits == []


# ---------------------------------------------------------------------------------------------------------
# compare: separate configurations, one seed, winners, the plot
# ---------------------------------------------------------------------------------------------------------


def _set(folder: Path, **changes: object) -> Path:
    """Edit a fake run's offramp.json: ``max_length=64``, or ``lr=...`` (under info.train.config)."""
    config = json.loads((folder / "offramp.json").read_text())
    for key, value in changes.items():
        if key == "lr":
            config["info"].setdefault("train", {}).setdefault("config", {})["lr"] = value
        else:
            config[key] = value
    (folder / "offramp.json").write_text(json.dumps(config))
    return folder


def test_compare_keeps_differing_settings_apart(tmp_path: Path) -> None:
    short = _set(_fake_run(tmp_path / "short", 42), max_length=64)
    long = _set(_fake_run(tmp_path / "long", 42), max_length=128)
    fast = _set(_fake_run(tmp_path / "fast", 42), max_length=128, lr=1e-4)
    slow = _set(_fake_run(tmp_path / "slow", 43), max_length=128, lr=2e-5)
    comparison = compare_runs([load_run(p) for p in (short, long)])
    assert [c.seeds for c in comparison.configurations] == [[42], [42]]  # not "seeds [42, 42]"
    assert [c.label.split()[-1] for c in comparison.configurations] == ["max_length=64", "max_length=128"]
    by_lr = compare_runs([load_run(p) for p in (fast, slow)])
    assert len(by_lr.configurations) == 2 and {c.label.split()[-1] for c in by_lr.configurations} == {
        "lr=0.0001",
        "lr=2e-05",
    }
    # the seed alone never splits a configuration, whatever depth it is recorded at
    same = compare_runs([load_run(_set(_fake_run(tmp_path / f"s{s}", s), lr=1e-4)) for s in (1, 2)])
    assert len(same.configurations) == 1 and same.configurations[0].seeds == [1, 2]
    # nor do training results recorded beside the settings (they differ from seed to seed)
    runs = []
    for seed, best in ((1, 0.70), (2, 0.73)):
        folder = _set(_fake_run(tmp_path / f"r{seed}", seed), lr=1e-4)
        config = json.loads((folder / "offramp.json").read_text())
        config["info"]["train"].update(
            best_val_score=best, total_steps=63, stages=[{"name": "train", "best_val_score": best}]
        )
        (folder / "offramp.json").write_text(json.dumps(config))
        runs.append(load_run(folder))
    grouped = compare_runs(runs)
    assert len(grouped.configurations) == 1 and grouped.configurations[0].seeds == [1, 2]


def test_compare_one_seed_text_and_winners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from offramp.render import render_compare_markdown

    a, b = _fake_run(tmp_path / "s1", 1), _fake_run(tmp_path / "s2", 2)
    other = _fake_run(tmp_path / "sweet", 1, scheme="sweet")
    comparison = compare_runs([load_run(p) for p in (a, b, other)])
    ids = comparison.ids()
    joint, sweet = comparison.configurations
    assert ids == {joint.label: "A", sweet.label: "B"}
    md = render_compare_markdown(comparison)
    one_seed = md.split(f"## B: {sweet.label}")[1]
    assert "± 0.0000" not in one_seed and "0.9000 ± n/a (1 seed)" in one_seed
    assert "# Comparison over seeds: sst2 dev" in md and "## Which configuration wins" in md
    w = next(w for w in comparison.winners if w.policy == "maxprob" and w.target == "2")
    means = {c.label: c.policies["maxprob"].at_speedup["2"].mean for c in comparison.configurations}
    assert means[w.best] >= means[w.runner_up] and w.margin == pytest.approx(
        means[w.best] - means[w.runner_up]
    )
    assert w.overlap is None  # sweet has one seed: no interval to compare
    assert f"maxprob @2×: {ids[w.best]} beats {ids[w.runner_up]} by {w.margin:.4f}" in md
    assert len(comparison.winners) == 2 * 3  # two shared policies × three targets
    js = comparison.to_json()
    assert js["winners"][0]["policy"] == "budget" and js["task"] == "sst2" and js["metric"] == "accuracy"
    assert main(["compare", str(a), str(b), str(other)]) == 0
    printed = capsys.readouterr().out
    one_seed = printed.split(f"B: {sweet.label}")[1]
    assert "n/a (1 seed)" in one_seed and "± 0.0000" not in one_seed and " beats " in printed


def test_interval_overlap() -> None:
    from offramp.compare import Interval

    lo, hi, near = (
        Interval.of([0.70, 0.71, 0.72]),
        Interval.of([0.90, 0.91, 0.92]),
        Interval.of([0.71, 0.72, 0.73]),
    )
    assert lo.overlaps(hi) is False and lo.overlaps(near) is True
    assert Interval.of([0.5]).overlaps(hi) is None and Interval.of([0.5]).half == 0.0


def test_compare_plot_labels_title_full_model_and_shared_range(tmp_path: Path) -> None:
    from offramp.plots import plot_compare

    runs = [load_run(_fake_run(tmp_path / f"r{s}", s, scheme)) for s, scheme in ((1, "joint"), (2, "sweet"))]
    comparison = compare_runs(runs)
    shown = plot_compare(comparison, tmp_path / "cmp.png")
    assert shown.ylabel == "accuracy" and "sst2 dev" in shown.title
    assert shown.panels == ["budget", "maxprob"] and shown.targets == [1.5, 2.0, 3.0]
    assert any(label.startswith("full model (final exit)") for label in shown.legend)
    assert [label.split(":")[0] for label in shown.legend[:2]] == ["A", "B"]
    assert shown.xlim is not None and shown.xlim[1] < 3.2
    assert (tmp_path / "cmp.png").stat().st_size > 1000


def test_evaluate_cli_refuses_a_model_of_another_task(
    minilm_sst2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in minilm_sst2_dir.iterdir())
    assert main(["evaluate", str(minilm_sst2_dir), "--task", "mrpc", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'sst2'" in err and "'mrpc'" in err
    assert sorted(p.name for p in minilm_sst2_dir.iterdir()) == before  # nothing cached or written


def test_compare_warns_about_a_seed_given_twice(tmp_path: Path) -> None:
    a, b = _fake_run(tmp_path / "a", 7), _fake_run(tmp_path / "b", 7)
    with pytest.warns(UserWarning, match=r"holds seed\(s\) \[7\] more than once"):
        comparison = compare_runs([load_run(a), load_run(b)])
    assert comparison.configurations[0].seeds == [7, 7]


def test_output_names_follow_the_data_source(tmp_path: Path) -> None:
    from offramp.data import TextDataset
    from offramp.evaluate import cache_path, data_name

    rows = [("good",), ("bad",)]
    assert data_name(TextDataset(rows, [1, 0], ["0", "1"], task="sst2", source="x.tsv")) == "sst2"
    assert data_name(TextDataset(rows, [1, 0], ["0", "1"], source="/d/My reviews.tsv")) == "My-reviews"
    assert data_name(TextDataset(rows, [1, 0], ["0", "1"], source="imdb[test]")) == "imdb"
    assert data_name(TextDataset(rows), fallback="mrpc") == "mrpc"
    assert cache_path(tmp_path, "sst2", "dev") == tmp_path / "exit_outputs_sst2_dev.npz"
