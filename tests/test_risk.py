"""Thresholds with a guarantee: p-values, fixed-sequence testing, Learn-then-Test calibration and its CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from test_calibrate import model_folder, synthetic_outputs

from offramp.calibrate import calibrate
from offramp.evaluate import ExitOutputs
from offramp.policies import policy_from_config
from offramp.risk import (
    binomial_p_value,
    fixed_sequence,
    harm,
    hoeffding_bentkus_p_value,
    learn_then_test,
    p_values,
    upper_bound,
)
from offramp.simulate import simulate

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread

# ---------------------------------------------------------------------------------------------------------
# p-values and fixed-sequence testing
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "alpha"), [(0, 5, 0.1), (1, 5, 0.1), (3, 10, 0.25), (7, 20, 0.5), (0, 1, 0.3)]
)
def test_binomial_p_value_is_the_lower_binomial_tail(k: int, n: int, alpha: float) -> None:
    by_hand = sum(math.comb(n, i) * alpha**i * (1 - alpha) ** (n - i) for i in range(k + 1))
    assert binomial_p_value(k, n, alpha) == pytest.approx(by_hand, rel=1e-12)
    assert binomial_p_value(k, n, alpha) == pytest.approx(stats.binom.cdf(k, n, alpha), rel=1e-12)
    assert p_values([k], n, alpha)[0] == pytest.approx(by_hand, rel=1e-12)


def test_hoeffding_bentkus_is_valid_but_never_tighter_for_a_01_loss() -> None:
    n, alpha = 200, 0.05
    counts = np.arange(0, 40)
    hb, exact = hoeffding_bentkus_p_value(counts, n, alpha), binomial_p_value(counts, n, alpha)
    assert (hb >= exact - 1e-12).all() and (hb <= 1.0).all()
    # its Bentkus term is e x the binomial tail, its Hoeffding term exp(-n h(a, alpha)); at a = 0:
    h0 = math.exp(-n * math.log(1 / (1 - alpha)))
    assert hb[0] == pytest.approx(min(h0, math.e * exact[0]))
    # super-uniform under the null R = alpha: P(p <= delta) <= delta
    draws = stats.binom.rvs(n, alpha, size=20000, random_state=np.random.default_rng(0))
    for p in (binomial_p_value(draws, n, alpha), hoeffding_bentkus_p_value(draws, n, alpha)):
        for delta in (0.05, 0.1, 0.2):
            assert (p <= delta).mean() <= delta + 0.01


def test_p_value_errors() -> None:
    with pytest.raises(ValueError, match="risk test 'chernoff': expected one of binomial, hoeffding-bentkus"):
        p_values([1], 10, 0.1, "chernoff")
    with pytest.raises(ValueError, match="max risk 1.5: expected a number strictly between 0 and 1"):
        p_values([1], 10, 1.5)
    with pytest.raises(ValueError, match="n=0"):
        p_values([0], 0, 0.1)


def test_upper_bound_is_clopper_pearson() -> None:
    for k, n in ((0, 50), (3, 50), (10, 400)):
        assert upper_bound(k, n, 0.95) == pytest.approx(stats.beta.ppf(0.95, k + 1, n - k), abs=1e-9)
    assert upper_bound(3, 50, 0.95, "hoeffding-bentkus") > upper_bound(3, 50, 0.95)


def test_fixed_sequence_stops_at_the_first_non_rejection() -> None:
    assert fixed_sequence([0.01, 0.02, 0.2, 0.01, 0.0], 0.05) == 2  # the later 0.01 is never reached
    assert fixed_sequence([0.2, 0.0], 0.05) == 0
    assert fixed_sequence([0.01, 0.05], 0.05) == 2
    assert fixed_sequence([0.01, float("nan"), 0.0], 0.05) == 1
    assert fixed_sequence([], 0.05) == 0


def test_learn_then_test_orders_slowest_first_and_takes_the_last_rejection() -> None:
    n = 1000
    speed = np.array([3.0, 1.0, 2.0, 1.5, 2.5])  # grid order is not speed order
    losses = np.array([0, 0, 60, 5, 10])  # setting 0 (fastest) would pass alone: it is never reached
    control = learn_then_test(losses, n, speed, 0.02, 0.95)
    assert control.order.tolist() == [1, 3, 2, 4, 0]
    assert control.certified == 2 and control.tested == 3 and control.index == 3
    assert control.p_value(3) == pytest.approx(stats.binom.cdf(5, n, 0.02))
    assert control.p_value(0) is None and control.risk(3) == 0.005
    none = learn_then_test([30, 0], n, [1.0, 2.0], 0.02, 0.95)
    assert none.index is None and none.tested == 1
    with pytest.raises(ValueError, match="confidence 1.0: expected a number strictly between 0 and 1"):
        learn_then_test(losses, n, speed, 0.02, 1.0)
    with pytest.raises(ValueError, match="2 loss counts for 3 speed-ups"):
        learn_then_test([0, 1], n, [1.0, 2.0, 3.0], 0.02, 0.9)


def test_harm_counts_only_what_early_exit_breaks() -> None:
    labels = np.array([0, 1, 1, 0])
    final = np.array([0, 1, 0, 1])  # right, right, wrong, wrong
    pred = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])
    assert harm(pred, final, labels).tolist() == [[True, False, False, False], [False, True, False, False]]


def test_coverage_on_synthetic_risks() -> None:
    """Settings with known nested risks: LTT's pick keeps its true risk <= D in >= 1 - delta of the draws;
    the naive "fastest setting with empirical risk <= D" does not."""
    rng = np.random.default_rng(0)
    true_risk = np.linspace(0.0, 0.1, 101)  # setting j harms input i iff u_i < true_risk[j]
    speed = 1.0 + np.arange(true_risk.size) / 10  # riskier = faster
    max_risk, n, trials = 0.05, 300, 600
    covered = {0.9: 0, 0.95: 0}
    naive = 0
    for _ in range(trials):
        u = rng.random(n)
        losses = (u[None, :] < true_risk[:, None]).sum(1)
        for level in covered:
            idx = learn_then_test(losses, n, speed, max_risk, level).index
            covered[level] += idx is None or true_risk[idx] <= max_risk
        naive += true_risk[np.flatnonzero(losses / n <= max_risk).max()] <= max_risk
    for level, hits in covered.items():
        assert hits / trials >= level - 0.02, (level, hits / trials)
    assert naive / trials < 0.75


# ---------------------------------------------------------------------------------------------------------
# Calibration on exit outputs
# ---------------------------------------------------------------------------------------------------------


def known_outputs() -> ExitOutputs:
    """Two exits, final exit always right. Exit 1: 700 inputs right at max-prob 0.99, 100 wrong at 0.80,
    200 right at 0.60. Only thresholds in (0.80, 0.99] keep the harm risk at 0 with early exits."""
    labels = np.zeros(1000, dtype=np.int64)
    prob = np.concatenate([np.full(700, 0.99), np.full(100, 0.80), np.full(200, 0.60)])
    right = np.concatenate([np.ones(700), np.zeros(100), np.ones(200)]).astype(bool)
    p0 = np.where(right, prob, 1 - prob)  # probability of class 0 (the label)
    first = np.log(np.stack([p0, 1 - p0], axis=1))
    final = np.tile([[3.0, -3.0]], (1000, 1))
    return ExitOutputs(np.stack([first, final]).astype(np.float32), labels, [1, 2])


def test_guaranteed_calibration_on_outputs_with_a_known_answer() -> None:
    out = known_outputs()
    result = calibrate(out, "maxprob", max_drop=5.0, confidence=0.95, task="sst2", split="val")
    tau = result.policy.tau
    assert 0.80 < tau <= 0.99 + 1e-6
    assert result.speedup == pytest.approx(2 * 1000 / (700 * 1 + 300 * 2))
    cal = result.to_config()["calibration"]
    assert cal["rule"] == "risk" and cal["certified"] is True and cal["confidence"] == 0.95
    assert cal["max_drop"] == 5.0 and cal["n"] == 1000 and "binomial" in cal["method"]
    assert cal["empirical_risk"] == 0.0 and cal["empirical_drop"] == 0.0
    assert cal["risk_bound"] == pytest.approx(100 * (1 - 0.05 ** (1 / 1000)), rel=1e-6)
    assert cal["tested"] < cal["grid_size"]  # stopped at the first setting that lets the 100 wrong out
    json.dumps(cal)
    # too strict for 1000 rows: (1 - 0.001)^1000 = 0.37 > 0.05, so nothing is certified
    strict = calibrate(out, "maxprob", max_drop=0.1, confidence=0.95, task="sst2")
    assert strict.policy.kind == "budget" and strict.policy.k == 2 and strict.speedup == 1.0
    assert strict.details["certified"] is False and strict.details["tested"] == 1
    assert "final exit" in strict.details["fallback"]
    assert (simulate(policy_from_config(strict.to_config()), out.logits).exit_slot == 1).all()


def test_guaranteed_calibration_matches_learn_then_test_on_the_sweep() -> None:
    from offramp.policies import get_policy
    from offramp.simulate import sweep

    out = synthetic_outputs(1500)
    result = calibrate(out, "entropy", max_drop=2.0, confidence=0.9, risk_test="hoeffding-bentkus")
    swept = sweep(get_policy("entropy"), out, grid_size=512)
    losses = harm(swept.prediction, out.logits[-1].argmax(-1), out.labels).sum(1)
    control = learn_then_test(losses, 1500, swept.speedup, 0.02, 0.9, "hoeffding-bentkus")
    assert control.index is not None and result.speedup == pytest.approx(swept.speedup[control.index])
    assert result.details["tested"] == control.tested and result.speedup > 1.0
    assert result.details["risk_bound"] <= 2.0 and result.details["p_value"] <= 0.1


def test_guaranteed_calibration_errors() -> None:
    out = synthetic_outputs(200)
    with pytest.raises(ValueError, match="confidence 1.2: expected a number strictly between 0 and 1"):
        calibrate(out, "maxprob", max_drop=1.0, confidence=1.2)
    with pytest.raises(ValueError, match=r"max drop 0.0 with a confidence: expected points strictly between"):
        calibrate(out, "maxprob", max_drop=0.0, confidence=0.9)
    with pytest.raises(ValueError, match="max drop 100.0 with a confidence"):
        calibrate(out, "maxprob", max_drop=100.0, confidence=0.9)
    with pytest.raises(ValueError, match="confidence= goes with max_drop"):
        calibrate(out, "maxprob", target_speedup=2.0, confidence=0.9)
    with pytest.raises(ValueError, match="temperature scaling and per-exit calibration fit to"):
        calibrate(out, "maxprob", max_drop=1.0, confidence=0.9, temperature_scaling=True)
    with pytest.raises(ValueError, match="beem-a fits its weights"):
        calibrate(out, "beem-a", max_drop=1.0, confidence=0.9)
    with pytest.raises(ValueError, match="risk test 'exact'"):
        calibrate(out, "maxprob", max_drop=1.0, confidence=0.9, risk_test="exact")
    bare = ExitOutputs(out.logits, None, out.exits)
    with pytest.raises(ValueError, match="only a speed-up goal"):
        calibrate(bare, "maxprob", max_drop=1.0, confidence=0.9, unlabeled=True)
    regression = ExitOutputs(out.logits[..., :1], out.labels.astype(np.float32), out.exits)
    with pytest.raises(ValueError, match="regression model"):
        calibrate(regression, "patience", max_drop=1.0, confidence=0.9)


# ---------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------


def test_calibrate_cli_max_drop_with_confidence(minilm_sst2_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from offramp.cli import main

    folder = model_folder(minilm_sst2_dir, tmp_path / "m")
    argv = ["calibrate", str(folder), "--split", "train", "--val-size", "160", "--seed", "0", "--no-progress"]
    assert main([*argv, "--max-drop", "20", "--confidence", "0.9", "--policy", "maxprob"]) == 0
    err = capsys.readouterr().err
    assert "with probability >= 0.9 (Learn-then-Test, binomial p-values)" in err
    saved = json.loads((folder / "offramp.json").read_text())["policy"]
    cal = saved["calibration"]
    assert cal["rule"] == "risk" and cal["confidence"] == 0.9 and cal["max_drop"] == 20.0 and cal["n"] == 160
    assert "learn-then-test" in cal["method"] and cal["tested"] >= 1
    # the slowest setting lets nothing out early on these rows: p = 0.8^160, certified at least
    assert cal["certified"] is True and saved["name"] == "threshold" and cal["risk_bound"] <= 20.0
    assert "certified an accuracy drop of at most 20 points with probability >= 0.9" in err
    # far too strict for 160 rows: nothing certified, the final exit is saved
    assert main([*argv, "--max-drop", "0.5", "--confidence", "0.95"]) == 0
    assert "no setting was certified" in capsys.readouterr().err
    saved = json.loads((folder / "offramp.json").read_text())["policy"]
    assert saved["name"] == "budget" and saved["params"]["k"] == 6 and saved["calibration"]["speedup"] == 1.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-drop", "0", "--confidence", "0.95"], "max drop 0.0 with a confidence: expected points"),
        (["--max-drop", "150", "--confidence", "0.95"], "max drop 150.0 with a confidence"),
        (["--max-drop", "-1", "--confidence", "0.95"], "max drop -1.0 with a confidence"),
        (["--max-drop", "1", "--confidence", "1.5"], "confidence 1.5: expected a number strictly between 0"),
        (["--max-drop", "1", "--confidence", "0"], "confidence 0.0: expected a number strictly between 0"),
        (["--target-speedup", "2", "--confidence", "0.9"], "--confidence C goes with --max-drop D"),
        (["--max-drop", "1", "--confidence", "0.9", "--unlabeled", "t.txt"], "--max-drop needs labels"),
        (["--max-drop", "1", "--unlabeled", "t.txt"], "--max-drop needs labels"),
    ],
)
def test_calibrate_cli_refuses_bad_guarantees(
    flags: list[str], message: str, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    from offramp import cascade
    from offramp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cascade, "load_any", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(["calibrate", str(tmp_path / "missing"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_evaluation_reports_say_what_was_guaranteed() -> None:
    from offramp.render import calibrated_sentence
    from offramp.report import Calibrated, OperatingPoint

    out = known_outputs()
    point = OperatingPoint(1.5, 0.3, 0.7, 1.3, [700, 300], 0.99)
    for drop, says in ((5.0, "at most 5 points with probability ≥ 0.95."), (0.1, "the final exit is kept")):
        config = calibrate(out, "maxprob", max_drop=drop, confidence=0.95, split="val").to_config()
        sentence = calibrated_sentence(Calibrated(config, point), "accuracy", 1.0)
        assert (
            sentence.startswith("Calibrated by Learn-then-Test on the val split (1000 rows)")
            and says in sentence
        )
