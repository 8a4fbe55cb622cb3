"""Speed–accuracy reports (offramp.report) on synthetic exit outputs, plus `compare` end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from offramp.analysis import curve_auc, exit_failure_rates, interpolate_at, mean_interval, overthinking_rate
from offramp.calibrate import sweep
from offramp.cli import main
from offramp.data import default_glue_dir
from offramp.evaluate import ExitOutputs
from offramp.policies import get_policy, regression_policies
from offramp.report import (
    compare_runs,
    evaluate_policies,
    jsonable,
    load_run,
    select_policies,
    write_compare_report,
    write_report,
)

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
def result(outputs: ExitOutputs) -> dict:
    return evaluate_policies(
        outputs, "sst2", False, grid_size=60, calibrated_policy={"name": "maxprob", "params": {"tau": 0.7}}
    )


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
    direct = sweep(
        get_policy("maxprob"), outputs.logits, outputs.labels, EXITS, None, None, "sst2", False, 60
    )
    pol = result["policies"]["maxprob"]
    assert pol["curve"]["score"] == pytest.approx(direct["score"])
    assert pol["curve"]["speedup"] == pytest.approx(direct["speedup"])
    want = interpolate_at(direct["speedup"], direct["score"], [1.5, 2.0, 3.0])
    assert [pol["at_speedup"][k] for k in ("1.5", "2", "3")] == pytest.approx(want.tolist())
    assert pol["auc"] == pytest.approx(curve_auc(direct["speedup"], direct["score"], 1.0, 3.0))


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
    res = evaluate_policies(outputs, "sst2", False, policies=["budget"], targets=(2.0, 5.0))
    assert res["policies"]["budget"]["at_speedup"]["5"] is None
    # An exit that is always right has no DIS: null, not NaN.
    perfect = ExitOutputs(outputs.logits.copy(), outputs.labels, EXITS)
    perfect.logits[-1] = np.eye(2, dtype=np.float32)[outputs.labels] * 3
    res = evaluate_policies(perfect, "sst2", False, policies=["maxprob"], grid_size=20)
    assert res["analysis"]["dis"]["maxprob"][-1] is None
    json.dumps(res, allow_nan=False)


def test_learned_and_regression_selection() -> None:
    res = evaluate_policies(synthetic(120, confidence=True), "sst2", False, policies=["pcee*", "learned"])
    assert set(res["policies"]) == {"pcee", "pcee-v1", "pcee-v2", "learned"}
    assert "learned" in res["analysis"]["dis"]
    assert set(select_policies(None, regression=True)) <= set(regression_policies())
    with pytest.raises(ValueError, match="no policy matches"):
        select_policies(["nosuch*"])
    rng = np.random.default_rng(1)
    reg = ExitOutputs(rng.normal(size=(4, 80, 1)).astype(np.float32), rng.normal(size=80), EXITS)
    res = evaluate_policies(reg, "stsb", True, grid_size=20)
    assert set(res["policies"]) <= set(regression_policies()) and res["metric"] == "pearson"
    assert res["analysis"] == {"dis": {}, "overthinking": None}


def test_write_report(result: dict, tmp_path: Path) -> None:
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
    res = evaluate_policies(synthetic(200, seed=seed), "sst2", False, policies=["budget", "maxprob"])
    payload = {"model_dir": str(folder), "task": "sst2", "split": "dev", "final": {"score": 0.9}, **res}
    (folder / "eval_sst2_dev.json").write_text(json.dumps(payload))
    return folder


def test_compare_aggregates_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _fake_run(tmp_path / "s1", 1), _fake_run(tmp_path / "s2", 2)
    other = _fake_run(tmp_path / "sweet", 1, scheme="sweet")
    runs = [load_run(a), load_run(b / "eval_sst2_dev.json"), load_run(other)]
    result = compare_runs(runs)
    confs = {c["label"].split()[0]: c for c in result["configurations"]}
    assert set(confs) == {"joint", "sweet"} and confs["joint"]["seeds"] == [1, 2]
    vals = [r["eval"]["policies"]["maxprob"]["at_speedup"]["2"] for r in runs[:2]]
    cell = confs["joint"]["policies"]["maxprob"]["at_speedup"]["2"]
    mean, half = mean_interval(vals)
    assert cell["mean"] == pytest.approx(mean) and cell["half"] == pytest.approx(half) and half > 0
    assert confs["sweet"]["policies"]["maxprob"]["at_speedup"]["2"]["half"] == 0.0
    assert math.isclose(confs["joint"]["policies"]["maxprob"]["mean_curve"]["speedup"][0], 1.0)
    out = write_compare_report(result, tmp_path / "cmp")
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
