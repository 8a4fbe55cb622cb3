"""Calibration rules on synthetic validation outputs, temperatures, speed-up helpers, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from offramp.calibrate import CalibrationResult, calibrate, config_file, fit_temperatures, save_policy
from offramp.evaluate import ExitOutputs
from offramp.metrics import ExitCosts, cost_fraction, saved_layers_fraction, speedup_ratio
from offramp.policies import get_policy, policy_from_config
from offramp.simulate import simulate, sweep

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


def exit_accuracies(logits: Any, labels: Any) -> list[float]:
    """BEEM-A's weights as :meth:`Policy.fit` measures them (each exit's validation accuracy)."""
    return get_policy("beem-a").fit(logits, labels).weights


def speedup_summary(slots: Any, exits: list[int]) -> dict[str, Any]:
    return ExitCosts.of_exits(exits).summary(slots)


def test_exit_accuracies() -> None:
    logits = np.array([[[1, 0], [0, 1]], [[0, 1], [0, 1]]], dtype=np.float32)
    assert exit_accuracies(logits, np.array([0, 1])) == [1.0, 0.5]


def test_target_speedup_picks_the_slowest_setting_that_meets_it() -> None:
    out = synthetic_outputs()
    result = calibrate(out, "maxprob", target_speedup=2.0, split="val").to_config()
    cal = result["calibration"]
    assert result["name"] == "threshold" and result["params"]["signal"] == "maxprob"
    assert cal["speedup"] >= 2.0 and cal["rule"] == "speedup" and cal["split"] == "val"
    pol = get_policy("maxprob")
    swept = sweep(pol, out, grid_size=512)
    meeting = swept.speedup[swept.speedup >= 2.0]
    assert cal["speedup"] == pytest.approx(meeting.min())
    # what is stored reproduces the measurement
    again = simulate(policy_from_config(result), out.logits)
    assert speedup_summary(again.exit_slot[0], EXITS)["speedup"] == pytest.approx(cal["speedup"])
    with pytest.raises(ValueError, match=r"speed-up 9x is out of reach .* fastest setting gives 6.00x"):
        calibrate(out, "maxprob", target_speedup=9.0)


@pytest.mark.parametrize("name", ["beem", "beem-a", "entropy", "pcee"])
def test_beem_rule_takes_the_fastest_setting_no_worse_than_the_final_exit(name: str) -> None:
    out = synthetic_outputs()
    result = calibrate(out, name, rule="beem").to_config()
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
    swept = sweep(pol, out, grid_size=512)
    for t in np.flatnonzero(swept.speedup > cal["speedup"] + 1e-9):
        e = swept.exit_slot[t] < len(EXITS) - 1
        wrong = swept.prediction[t][e] != out.labels[e]
        assert wrong.mean() > final_wrong[e].mean()


def test_beem_rule_per_exit_alphas() -> None:
    out = synthetic_outputs()
    result = calibrate(out, "beem", rule="beem", per_exit=True).to_config()
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
    result = calibrate(out, "norm_entropy", max_drop=1.0, task="sst2").to_config()
    cal = result["calibration"]
    assert cal["metric"] == "accuracy" and cal["score"] >= cal["final_score"] - 0.01
    swept = sweep(get_policy("norm_entropy"), out, grid_size=512, task="sst2")
    faster = swept.speedup > cal["speedup"] + 1e-9
    assert (swept.score[faster] < cal["final_score"] - 0.01).all()


def test_temperature_scaling_is_stored_and_used() -> None:
    out = synthetic_outputs()
    result = calibrate(out, "maxprob", target_speedup=1.5, temperature_scaling=True).to_config()
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
    costs = ExitCosts.of_exits([2, 4, 6])
    layers = costs.layers(slots)
    assert layers.tolist() == [2, 4, 6, 6]
    assert speedup_ratio(layers, 6) == pytest.approx(6 * 4 / 18)  # COSEE eq. 12
    assert saved_layers_fraction(layers, 6) == pytest.approx(0.25)  # PCEE eq. 4
    assert cost_fraction(layers, 6) == pytest.approx(0.75)  # SWEET eq. 1
    # a multi-model cascade pays for every model it ran (SWEET: 6/12 + 4/12 + 1/12 = 11/12)
    assert ExitCosts.cascade([1, 4, 6]).layers(np.array([2])).tolist() == [11]
    assert ExitCosts.cascade([1, 2, 3]).summary(np.array([0, 2]))["cost_fraction"] == pytest.approx(3.5 / 3)
    grid = np.array([[0, 0], [2, 2]])  # one value per threshold
    np.testing.assert_allclose(speedup_ratio(costs.layers(grid), 6), [3.0, 1.0])
    summary = speedup_summary(torch.tensor([0, 2, 2]), [2, 4, 6])
    assert summary["exit_counts"] == [1, 0, 2] and summary["mean_layers"] == pytest.approx(14 / 3)
    with pytest.raises(ValueError, match="exit slots must lie in 0..2"):
        costs.layers(np.array([3]))


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


# ---------------------------------------------------------------------------------------------------------
# The typed result, label-free calibration, saving
# ---------------------------------------------------------------------------------------------------------


def test_calibration_result_round_trips_the_saved_format() -> None:
    out = synthetic_outputs()
    result = calibrate(out, "beem-a", rule="beem", task="sst2", split="val")
    assert isinstance(result, CalibrationResult) and result.policy.kind == "beem" and result.rule == "beem"
    config = result.to_config()
    assert set(config) == {"name", "params", "temperatures", "calibration"}
    assert config == json.loads(json.dumps(config)) == result.to_json()
    cal = config["calibration"]
    for key in ("split", "n", "exits", "metric", "final_score", "rule", "compare", "grid_size", "early_exits",
                "early_error", "final_error_on_reference", "weights_from", "speedup", "saved_layers",
                "cost_fraction", "mean_layers", "exit_counts", "score"):  # fmt: skip
        assert key in cal, key
    assert result.speedup == cal["speedup"] and result.n == cal["n"] == len(out.labels)
    assert CalibrationResult.from_config(config).to_config() == config
    with pytest.raises(ValueError, match="no calibration record"):
        CalibrationResult.from_config({"name": "maxprob", "params": {"tau": 0.9}})


def test_unlabeled_speedup_goal_needs_no_labels() -> None:
    out = synthetic_outputs()
    labelled = calibrate(out, "entropy", target_speedup=2.0)
    bare = ExitOutputs(out.logits, None, EXITS, out.confidence)
    result = calibrate(bare, "entropy", target_speedup=2.0, unlabeled=True, split="file t.txt")
    assert result.speedup == pytest.approx(labelled.speedup) and result.speedup >= 2.0
    assert result.policy.to_config() == labelled.policy.to_config()
    cal = result.to_config()["calibration"]
    assert cal["split"] == "file t.txt" and cal["unlabeled"] is True and cal["rule"] == "speedup"
    assert result.score is None and not {"score", "metric", "final_score"} & set(cal)
    with pytest.raises(ValueError, match="only a speed-up goal"):
        calibrate(bare, "beem", rule="beem", unlabeled=True)
    with pytest.raises(ValueError, match="needs labels"):
        calibrate(bare, "beem-a", target_speedup=2.0, unlabeled=True)


def test_beem_rule_warns_when_the_metric_is_not_accuracy(recwarn: Any) -> None:
    out = synthetic_outputs()
    calibrate(out, "beem", rule="beem", task="sst2")
    assert not [w for w in recwarn if "BEEM rule" in str(w.message)]
    with pytest.warns(UserWarning, match=r"compares error rates .* scored by f1"):
        calibrate(out, "beem", rule="beem", task="mrpc")


def test_save_policy_writes_the_folders_own_config_file(tmp_path: Path) -> None:
    (tmp_path / "offramp.json").write_text(json.dumps({"exits": [1, 2], "policy": None}))
    policy = {"name": "maxprob", "params": {"tau": 0.9}, "temperatures": None}
    assert save_policy(tmp_path, policy) == config_file(tmp_path) == tmp_path / "offramp.json"
    assert json.loads((tmp_path / "offramp.json").read_text()) == {"exits": [1, 2], "policy": policy}
    (tmp_path / "cascade.json").write_text("{}")  # a cascade folder keeps its policy in cascade.json
    assert save_policy(tmp_path, policy).name == "cascade.json"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    with pytest.raises(FileNotFoundError, match="expected a model folder"):
        save_policy(tmp_path / "missing", policy)


def test_calibrate_module_is_a_library() -> None:
    """No argparse, no CLI, no runtime: calibrate.py sits under the command line."""
    import ast

    import offramp.calibrate as module

    tree = ast.parse(Path(module.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {
        n for n in names if n in ("argparse", "engine", "cli") or n.startswith(("cli", "offramp.cli"))
    }


# ---------------------------------------------------------------------------------------------------------
# The command line: data checks, recorded data sources, --unlabeled, progress
# ---------------------------------------------------------------------------------------------------------


def model_folder(source: Path, dest: Path, **config: Any) -> Path:
    """A copy of a model folder with ``config`` merged into its offramp.json (``info`` replaced)."""
    shutil.copytree(source, dest)
    path = dest / "offramp.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return dest


def sst2_file(path: Path, rows: int = 120, labels: tuple[str, ...] = ("0", "1")) -> Path:
    """``rows`` SST-2 train sentences as a CSV (sentence,label), labels cycling through ``labels``."""
    import csv

    from offramp.data import default_glue_dir, load_glue

    data = load_glue("sst2", default_glue_dir(), "train")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence", "label"])
        for i in range(rows):
            label = labels[i % len(labels)] if len(labels) > 2 else str(data.labels[i])
            writer.writerow([data.texts[i][0], label])
    return path


def test_calibrate_refuses_data_whose_labels_do_not_fit(
    minilm_sst2_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    from offramp import evaluate
    from offramp.cli import main

    folder = model_folder(minilm_sst2_dir, tmp_path / "m")
    before = (folder / "offramp.json").read_bytes()
    monkeypatch.setattr(evaluate, "collect_exit_outputs", lambda *a, **k: pytest.fail("ran the model"))
    three = sst2_file(tmp_path / "three.csv", 30, labels=("0", "1", "2"))
    argv = ["calibrate", str(folder), "--data-file", str(three), "--text-columns", "sentence"]
    assert main([*argv, "--target-speedup", "1.5", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has 3 labels" in err and "trained for 2" in err
    assert (folder / "offramp.json").read_bytes() == before  # nothing saved
    code = main(["calibrate", str(folder), "--task", "mrpc", "--split", "dev", "--target-speedup", "1.5"])
    assert code == 2 and "trained on task 'sst2'" in capsys.readouterr().err
    assert (folder / "offramp.json").read_bytes() == before


def test_model_trained_from_a_file_calibrates_on_its_held_out_rows(
    minilm_sst2_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    from offramp.cli import main

    data = sst2_file(tmp_path / "train.csv")
    recorded = {"data": {"data_file": str(data), "text_columns": ["sentence"], "label_column": "label"},
                "val_size": 40, "seed": 0}  # fmt: skip
    folder = model_folder(minilm_sst2_dir, tmp_path / "m", task=None, info=recorded)
    goal = ["--target-speedup", "1.5", "--no-progress"]
    assert main(["calibrate", str(folder), *goal]) == 0  # as the README shows: no data flag
    cal = json.loads((folder / "offramp.json").read_text())["policy"]["calibration"]
    assert cal["n"] == 40 and "held-out 40 rows, seed 0" in cal["split"]
    # the same file named again is still carved, never calibrated on the rows it trained on
    assert (
        main(["calibrate", str(folder), "--data-file", str(data), "--text-columns", "sentence", *goal]) == 0
    )
    assert json.loads((folder / "offramp.json").read_text())["policy"]["calibration"]["n"] == 40
    other = sst2_file(tmp_path / "other.csv", 60)
    assert (
        main(["calibrate", str(folder), "--data-file", str(other), "--text-columns", "sentence", *goal]) == 0
    )
    assert json.loads((folder / "offramp.json").read_text())["policy"]["calibration"]["n"] == 60
    capsys.readouterr()
    bare = model_folder(minilm_sst2_dir, tmp_path / "bare", task=None, info={})
    assert main(["calibrate", str(bare), *goal]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no data source" in err[0] and "--data-file FILE" in err[0]
    assert main(["calibrate", str(folder), "--val-size", "1.5", *goal]) == 2
    assert "--val-size 1.5: expected a row count" in capsys.readouterr().err


def test_calibrate_unlabeled_file(minilm_sst2_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from offramp.cli import main
    from offramp.data import default_glue_dir, load_glue

    texts = [t[0] for t in load_glue("sst2", default_glue_dir(), "dev").texts[:50]]
    traffic = tmp_path / "traffic.txt"
    traffic.write_text("\n".join(texts) + "\n")
    folder = model_folder(minilm_sst2_dir, tmp_path / "m")
    before = (folder / "offramp.json").read_bytes()
    assert main(["calibrate", str(folder), "--rule", "beem", "--unlabeled", str(traffic)]) == 2
    assert "--rule beem needs labels" in capsys.readouterr().err
    assert (folder / "offramp.json").read_bytes() == before
    argv = ["calibrate", str(folder), "--unlabeled", str(traffic), "--target-speedup", "1.5", "--no-progress"]
    assert main(argv) == 0
    assert "no labels, no score" in capsys.readouterr().err
    saved = json.loads((folder / "offramp.json").read_text())["policy"]
    cal = saved["calibration"]
    assert cal["n"] == 50 and str(traffic) in cal["split"] and cal["speedup"] >= 1.5 and "score" not in cal
    assert cal["unlabeled"] is True


def test_calibrate_progress_and_which_policy(minilm_sst2_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from offramp.cli import main

    folder = model_folder(minilm_sst2_dir, tmp_path / "m")
    argv = ["calibrate", str(folder), "--split", "train", "--val-size", "48", "--seed", "0", "--dry-run"]
    assert main([*argv, "--rule", "beem", "--policy", "beem-a"]) == 0
    captured = capsys.readouterr()
    assert "calibrating policy 'beem'" in captured.err and '"weights": "accuracy"' in captured.err
    assert "BEEM's rule" in captured.err and "evaluating" in captured.err  # the progress bar
    assert json.loads(captured.out)["calibration"]["rule"] == "beem"
    assert main([*argv, "--target-speedup", "1.5", "--no-progress"]) == 0
    assert "evaluating" not in capsys.readouterr().err


def test_recalibrating_a_saved_beem_a_policy(minilm_sst2_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from offramp.cli import main

    folder = model_folder(minilm_sst2_dir, tmp_path / "m")
    argv = ["calibrate", str(folder), "--split", "train", "--val-size", "48", "--seed", "0", "--no-progress"]
    assert main([*argv, "--rule", "beem", "--policy", "beem-a"]) == 0
    weights = json.loads((folder / "offramp.json").read_text())["policy"]["params"]["weights"]
    assert isinstance(weights, list) and len(weights) == 6
    capsys.readouterr()
    assert main([*argv, "--rule", "beem"]) == 0  # the saved BEEM-A: weights measured on this split again
    assert '"weights": "accuracy"' in capsys.readouterr().err
    traffic = tmp_path / "t.txt"
    traffic.write_text("a gripping film\ndull and long\nfine\n")
    assert main(["calibrate", str(folder), "--unlabeled", str(traffic), "--target-speedup", "1.2"]) == 0
    saved = json.loads((folder / "offramp.json").read_text())["policy"]  # without labels: weights kept
    assert saved["params"]["weights"] == pytest.approx(weights) and saved["calibration"]["n"] == 3
