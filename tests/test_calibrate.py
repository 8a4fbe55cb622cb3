"""Calibration rules on synthetic validation outputs, temperatures, speed-up helpers, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from offramp.calibrate import calibrate, exit_accuracies, fit_temperatures, sweep
from offramp.simulate import simulate
from offramp.evaluate import ExitOutputs
from offramp.metrics import (
    cost_fraction,
    layers_per_input,
    saved_layers_fraction,
    speedup_ratio,
    speedup_summary,
)
from offramp.policies import get_policy, policy_from_config

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread
EXITS = [1, 2, 3, 4, 5, 6]


def synthetic_outputs(n: int = 600, seed: int = 0) -> ExitOutputs:
    """Six exits that get more accurate with depth; confident inputs are more often right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    margin = rng.normal(size=n) * 1.5 + 0.8
    logits = []
    for k in range(len(EXITS)):
        signal = margin * (0.4 + 0.3 * k) + rng.normal(size=n) * (1.2 - 0.15 * k)
        z = np.stack([-signal, signal], axis=1) / 2
        logits.append(np.where(labels[:, None] == 1, z, -z))
    conf = rng.normal(size=(len(EXITS), n))
    return ExitOutputs(np.asarray(logits, np.float32), labels, EXITS, conf.astype(np.float32))


def test_fit_temperatures_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(4000, 3)) * 2
    labels = np.array([rng.choice(3, p=np.exp(r) / np.exp(r).sum()) for r in true])
    temps = fit_temperatures(np.stack([true * 3.0, true]), labels)
    assert temps[0] == pytest.approx(3.0, rel=0.1) and temps[1] == pytest.approx(1.0, rel=0.1)


def test_exit_accuracies() -> None:
    logits = np.array([[[1, 0], [0, 1]], [[0, 1], [0, 1]]], dtype=np.float32)
    assert exit_accuracies(logits, np.array([0, 1])) == [1.0, 0.5]


def test_target_speedup_picks_the_slowest_setting_that_meets_it() -> None:
    out = synthetic_outputs()
    result = calibrate(out, "maxprob", target_speedup=2.0, split="val")
    cal = result["calibration"]
    assert result["name"] == "threshold" and result["params"]["signal"] == "maxprob"
    assert cal["speedup"] >= 2.0 and cal["rule"] == "speedup" and cal["split"] == "val"
    pol = get_policy("maxprob")
    swept = sweep(pol, out.logits, out.labels, EXITS, grid_size=512)
    meeting = swept["speedup"][swept["speedup"] >= 2.0]
    assert cal["speedup"] == pytest.approx(meeting.min())
    # what is stored reproduces the measurement
    again = simulate(policy_from_config(result), out.logits)
    assert speedup_summary(again.exit_slot[0], EXITS)["speedup"] == pytest.approx(cal["speedup"])
    with pytest.raises(ValueError, match=r"speed-up 9x is out of reach .* fastest setting gives 6.00x"):
        calibrate(out, "maxprob", target_speedup=9.0)


@pytest.mark.parametrize("name", ["beem", "beem-a", "entropy", "pcee"])
def test_beem_rule_takes_the_fastest_setting_no_worse_than_the_final_exit(name: str) -> None:
    out = synthetic_outputs()
    result = calibrate(out, name, rule="beem")
    cal = result["calibration"]
    pol = policy_from_config(result)
    sim = simulate(pol, out.logits)
    slots, pred = sim.exit_slot[0], sim.prediction[0]
    early = slots < len(EXITS) - 1
    final_wrong = out.logits[-1].argmax(-1) != out.labels
    assert early.sum() == cal["early_exits"] > 0
    assert (pred[early] != out.labels[early]).mean() <= final_wrong[early].mean()
    if name == "beem-a":
        assert pol.weights == pytest.approx(exit_accuracies(out.logits, out.labels))
    # every faster setting of the grid breaks the rule
    swept = sweep(pol, out.logits, out.labels, EXITS, grid_size=512)
    for t in np.flatnonzero(swept["speedup"] > cal["speedup"] + 1e-9):
        e = swept["exit_slot"][t] < len(EXITS) - 1
        wrong = swept["prediction"][t][e] != out.labels[e]
        assert wrong.mean() > final_wrong[e].mean()


def test_beem_rule_per_exit_alphas() -> None:
    out = synthetic_outputs()
    result = calibrate(out, "beem", rule="beem", per_exit=True)
    alphas = result["params"]["alpha"]
    assert len(alphas) == len(EXITS)
    slots = simulate(policy_from_config(result), out.logits).exit_slot[0]
    final_wrong = out.logits[-1].argmax(-1) != out.labels
    assert (slots < len(EXITS) - 1).any()
    for k in range(len(EXITS) - 1):
        here = slots == k
        assert (out.logits[k].argmax(-1)[here] != out.labels[here]).sum() <= final_wrong[here].sum()
    with pytest.raises(ValueError, match="per-exit calibration is implemented for the BEEM rule"):
        calibrate(out, "entropy", rule="beem", per_exit=True)


def test_accuracy_budget_takes_the_fastest_setting_within_the_drop() -> None:
    out = synthetic_outputs()
    result = calibrate(out, "norm_entropy", max_drop=1.0, task="sst2")
    cal = result["calibration"]
    assert cal["metric"] == "accuracy" and cal["score"] >= cal["final_score"] - 0.01
    swept = sweep(get_policy("norm_entropy"), out.logits, out.labels, EXITS, grid_size=512, task="sst2")
    faster = swept["speedup"] > cal["speedup"] + 1e-9
    assert (swept["score"][faster] < cal["final_score"] - 0.01).all()


def test_temperature_scaling_is_stored_and_used() -> None:
    out = synthetic_outputs()
    result = calibrate(out, "maxprob", target_speedup=1.5, temperature_scaling=True)
    assert len(result["temperatures"]) == len(EXITS) and result["temperatures"] != [1.0] * len(EXITS)
    json.dumps(result)  # a plain-JSON dict, ready for offramp.json
    sim = simulate(policy_from_config(result), out.logits)
    measured = speedup_summary(sim.exit_slot[0], EXITS)["speedup"]
    assert measured == pytest.approx(result["calibration"]["speedup"])


def test_calibrate_errors() -> None:
    out = synthetic_outputs(n=50)
    with pytest.raises(ValueError, match="exactly one goal"):
        calibrate(out, "maxprob")
    with pytest.raises(ValueError, match="exactly one goal"):
        calibrate(out, "maxprob", target_speedup=2.0, max_drop=1.0)
    with pytest.raises(ValueError, match="unknown rule 'fast'"):
        calibrate(out, "maxprob", rule="fast")
    with pytest.raises(ValueError, match="target speed-up 0.5: expected a ratio >= 1.0"):
        calibrate(out, "maxprob", target_speedup=0.5)
    unlabelled = ExitOutputs(out.logits, None, EXITS)
    with pytest.raises(ValueError, match="needs a labelled validation split"):
        calibrate(unlabelled, "maxprob", target_speedup=2.0)


def test_speedup_conventions() -> None:
    slots = np.array([0, 1, 2, 2])
    layers = layers_per_input(slots, [2, 4, 6])
    assert layers.tolist() == [2, 4, 6, 6]
    assert speedup_ratio(layers, 6) == pytest.approx(6 * 4 / 18)  # COSEE eq. 12
    assert saved_layers_fraction(layers, 6) == pytest.approx(0.25)  # PCEE eq. 4
    assert cost_fraction(slots, [2, 4, 6]) == pytest.approx(0.75)  # SWEET eq. 1
    # a multi-model cascade pays for every model it ran (SWEET: 6/12 + 4/12 + 1/12 = 11/12)
    assert layers_per_input(np.array([2]), [1, 4, 6], multi_model=True).tolist() == [11]
    assert cost_fraction(np.array([0, 2]), [1, 2, 3], multi_model=True) == pytest.approx(3.5 / 3)
    grid = np.array([[0, 0], [2, 2]])  # one value per threshold
    np.testing.assert_allclose(speedup_ratio(layers_per_input(grid, [2, 4, 6]), 6), [3.0, 1.0])
    summary = speedup_summary(torch.tensor([0, 2, 2]), [2, 4, 6])
    assert summary["exit_counts"] == [1, 0, 2] and summary["mean_layers"] == pytest.approx(14 / 3)
    with pytest.raises(ValueError, match="exit slots must lie in 0..2"):
        layers_per_input(np.array([3]), [2, 4, 6])


def test_calibrate_cli_saves_the_default_policy(minilm_sst2_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from offramp.cli import main
    from offramp.engine import EarlyExitEngine
    from offramp.model import MultiExitModel

    folder = tmp_path / "m"
    shutil.copytree(minilm_sst2_dir, folder)
    code = main(["calibrate", str(folder), "--task", "sst2", "--target-speedup", "1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "records no held-out validation split" in err and len(err.strip().splitlines()) == 1
    args = ["calibrate", str(folder), "--task", "sst2", "--split", "train", "--val-size", "48", "--seed", "0"]
    assert main([*args, "--target-speedup", "1.5", "--policy", "entropy"]) == 0
    saved = json.loads((folder / "offramp.json").read_text())["policy"]
    assert saved["name"] == "threshold" and saved["params"]["signal"] == "entropy"
    assert saved["calibration"]["speedup"] >= 1.5 and saved["calibration"]["n"] == 48
    model = MultiExitModel.load(folder)
    res = EarlyExitEngine(model).predict(["a gripping film", "dull"])
    assert res.policy["params"]["tau"] == saved["params"]["tau"]
    code = main([*args, "--target-speedup", "1.5", "--policy", "maxprob", "--threshold", "2"])
    assert code == 2 and "tau=2 out of range" in capsys.readouterr().err
