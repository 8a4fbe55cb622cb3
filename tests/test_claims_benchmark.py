"""The claims benchmark's bookkeeping: tables, paired-bootstrap verdicts and plots from finished runs.

Synthetic exit outputs stand in for trained models (no training here): each exit is right on a
chosen share of 400 examples, so the verdicts it must reach are known in advance.
"""

from __future__ import annotations

import importlib.util
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from offramp.analysis import bootstrap_weights, resampled_curve
from offramp.evaluate import ExitOutputs

SPEC = importlib.util.spec_from_file_location(
    "claims", Path(__file__).parents[1] / "benchmarks" / "claims.py"
)
assert SPEC is not None and SPEC.loader is not None
claims = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(claims)

N = 400
LABELS = np.random.default_rng(0).integers(0, 2, N)


def fake_outputs(accuracies: list[float], seed: int) -> ExitOutputs:
    """Exit k is right on a random accuracies[k] share of the examples, with random confidence."""
    rng = np.random.default_rng(seed)
    logits = np.zeros((len(accuracies), N, 2), dtype=np.float32)
    for k, acc in enumerate(accuracies):
        right = rng.random(N) < acc
        pred = np.where(right, LABELS, 1 - LABELS)
        logits[k, np.arange(N), pred] = rng.uniform(0.05, 4.0, N)
    exits = [6] if len(accuracies) == 1 else list(range(1, len(accuracies) + 1))
    return ExitOutputs(logits=logits, labels=LABELS.copy(), exits=exits)


def add_run(out: Path, task: str, run: str, seed: int, accuracies: list[float]) -> None:
    outputs = fake_outputs(accuracies, seed=zlib.crc32(f"{run}-{seed}".encode()))
    npz = claims.outputs_path(out, task, run, seed)
    npz.parent.mkdir(parents=True, exist_ok=True)
    outputs.save(str(npz))
    rec = {"task": task, "run": run, "seed": seed, "dev_size": N, "train_size": 100, "epochs": 1.0,
           "batch_size": 32, "lr": 1e-4, "max_length": 64, "train_seconds": 1.0,
           **claims.score_outputs(outputs, False)}  # fmt: skip
    path = claims.run_path(out, task, run, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_verdicts_follow_the_numbers(tmp_path: Path) -> None:
    add_run(tmp_path, "sst2", "single", 42, [0.85])
    add_run(tmp_path, "sst2", "joint", 42, [0.5, 0.5, 0.6, 0.8, 0.85, 0.85])
    add_run(tmp_path, "sst2", "sweet", 42, [0.75, 0.75, 0.75, 0.8, 0.8, 0.8])
    summary = claims.summarise(tmp_path)
    by = {(v["claim"], v["point"]): v for v in summary["verdicts"]}
    first = by[("SWEET early exits > joint", "exit 1")]
    tables = summary["tasks"]["sst2"]["runs"]
    # plain values are the tables' numbers; a 25-point gap on 400 examples is far outside the noise
    assert first["a"] == tables["sweet"]["per_exit"][0] and first["b"] == tables["joint"]["per_exit"][0]
    assert first["holds"] and first["significant"] and first["ci"][0] > 0.1
    assert first["verdict"].startswith("holds: ")
    at2 = by[("SWEET early exits > joint", "maxprob at 2×")]
    assert at2["a"] == pytest.approx(tables["sweet"]["policies"]["maxprob"]["at"]["2"])
    assert (
        by[("PCEE > PABEE", "joint model at 1.5×")]["ci"][0]
        <= by[("PCEE > PABEE", "joint model at 1.5×")]["delta"]
    )
    assert not any(v["claim"].startswith(("COSEE", "BEEM")) for v in summary["verdicts"])  # runs missing
    md = (tmp_path / "claims.md").read_text()
    assert "Single-exit baseline (one head after layer 6): **" in md and "| maxprob | " in md
    assert "| SWEET early exits > joint | mean of exits 1–3 | holds (Δ +" in md  # the overview row
    assert (tmp_path / "claims_sst2.png").stat().st_size > 0


def test_equal_models_are_not_significantly_different(tmp_path: Path) -> None:
    for run in ("joint", "cosee"):
        add_run(tmp_path, "rte", run, 1, [0.6] * 6)  # same accuracy, independent errors
    found = [v for v in claims.summarise(tmp_path)["verdicts"] if v["claim"].startswith("COSEE")]
    assert found and all(v["significant"] is False or v["a"] is None for v in found)
    assert all("not significant" in v["verdict"] or v["a"] is None for v in found)


def test_seeds_are_averaged_and_paired(tmp_path: Path) -> None:
    for seed, acc in ((1, 0.6), (2, 0.9)):
        add_run(tmp_path, "rte", "joint", seed, [acc] * 6)
        add_run(tmp_path, "rte", "sweet", seed, [acc + 0.05] * 6)
    summary = claims.summarise(tmp_path)
    agg = summary["tasks"]["rte"]["runs"]["joint"]
    per_seed = [json.loads(claims.run_path(tmp_path, "rte", "joint", s).read_text())["final"] for s in (1, 2)]
    assert agg["seeds"] == [1, 2] and agg["final"] == pytest.approx(np.mean(per_seed))
    exit1 = next(v for v in summary["verdicts"] if v["point"] == "exit 1")
    sweet1 = [
        json.loads(claims.run_path(tmp_path, "rte", "sweet", s).read_text())["per_exit"][0] for s in (1, 2)
    ]
    joint1 = [
        json.loads(claims.run_path(tmp_path, "rte", "joint", s).read_text())["per_exit"][0] for s in (1, 2)
    ]
    assert exit1["per_seed_delta"] == pytest.approx(np.subtract(sweet1, joint1).tolist())
    assert (
        exit1["delta"] == pytest.approx(np.mean(exit1["per_seed_delta"])) and "per seed Δ" in exit1["verdict"]
    )


def test_resampled_curve_with_unit_weights_is_the_curve() -> None:
    layers = np.array([[1, 2, 6, 6], [6, 6, 6, 6]])
    right = np.array([[1, 0, 1, 1], [1, 1, 1, 0]], dtype=bool)
    speed, acc = resampled_curve(layers, right, 6, np.ones((1, 4)))
    assert speed.tolist() == [[24 / 15, 1.0]] and acc.tolist() == [[0.75, 0.75]]
    w = bootstrap_weights(4, samples=500, seed=1)
    assert w.shape == (500, 4) and (w.sum(1) == 4).all()
    speed, acc = resampled_curve(layers, right, 6, w)
    assert speed.shape == (500, 2) and np.allclose(speed[:, 1], 1.0) and 0.6 < acc[:, 1].mean() < 0.9


def test_missing_outputs_stop_the_summary_before_writing(tmp_path: Path) -> None:
    add_run(tmp_path, "mrpc", "joint", 1, [0.7] * 6)
    claims.outputs_path(tmp_path, "mrpc", "joint", 1).unlink()
    with pytest.raises(SystemExit, match="mrpc-joint-s1.npz"):
        claims.summarise(tmp_path)
    assert not (tmp_path / "claims.md").exists()


def test_chosen_lr_verdicts_come_first_and_refresh_without_outputs(tmp_path: Path) -> None:
    add_run(tmp_path, "sst2", "joint", 42, [0.5, 0.5, 0.6, 0.8, 0.85, 0.85])
    add_run(tmp_path, "sst2", "sweet", 42, [0.75, 0.75, 0.75, 0.8, 0.8, 0.8])
    claims.summarise(tmp_path)
    evidence = claims.Evidence({"joint": [fake_outputs([0.8] * 6, 1)], "sweet": [fake_outputs([0.6] * 6, 2)]})
    chosen = {"task": "sst2", "lrs": {"joint": 2e-4, "sweet": 2e-5}, "seeds": [42], "finished": "today",
              "setting": {"train_size": 100, "epochs": 2.0, "batch_size": 32, "max_length": 64},
              "verdicts": claims.verdicts("sst2", evidence, N)}  # fmt: skip
    (tmp_path / claims.CHOSEN_LR_FILE).write_text(json.dumps(chosen))
    for npz in (tmp_path / "claims" / "outputs").glob("*.npz"):
        npz.unlink()  # the refresh needs only the committed claims.json
    assert claims.main(["--chosen-lr-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "claims.md").read_text()
    first, rest = md.split("## Overview at lr 1e-4 for every scheme")
    assert "## Verdicts at each scheme's chosen learning rate (sst2)" in first and "joint 0.0002" in first
    # at the chosen lrs sweet's exit 1 is 20 points BELOW joint's; at lr 1e-4 it was 25 above
    assert "| SWEET early exits > joint | mean of exits 1–3 | does not hold (Δ -" in first
    assert "| SWEET early exits > joint | mean of exits 1–3 | holds (Δ +" in rest
    assert json.loads((tmp_path / "claims.json").read_text())["chosen_lr"]["lrs"]["sweet"] == 2e-5
