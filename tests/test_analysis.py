"""The papers' analyses, each against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offramp.analysis import (
    curve_auc,
    difficulty_inversion_score,
    exit_failure_rates,
    exit_histogram,
    interpolate_at,
    mean_interval,
    overthinking_rate,
)


def test_interpolate_at_is_linear_and_never_extrapolates() -> None:
    speedups = [3.0, 1.0, 2.0, 2.0]  # unsorted, with a duplicate speed-up (averaged: 0.8)
    scores = [0.6, 0.9, 0.7, 0.9]
    got = interpolate_at(speedups, scores, [1.0, 1.5, 2.5, 3.0, 3.5, 0.5])
    np.testing.assert_allclose(got[:4], [0.9, 0.85, 0.7, 0.6])
    assert math.isnan(got[4]) and math.isnan(got[5])


def test_curve_auc_is_the_mean_score_over_the_range() -> None:
    # straight line from (1, 1.0) to (3, 0.0): mean over [1, 3] is 0.5, over [1, 2] is 0.75
    assert curve_auc([1, 3], [1.0, 0.0]) == pytest.approx(0.5)
    assert curve_auc([1, 3], [1.0, 0.0], 1.0, 2.0) == pytest.approx(0.75)
    assert math.isnan(curve_auc([1, 2], [1.0, 0.0], 1.0, 3.0))
    with pytest.raises(ValueError, match="lo < hi"):
        curve_auc([1, 2], [1, 1], 2.0, 2.0)


def test_mean_interval() -> None:
    mean, half = mean_interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027; sd = 1; half = 4.3027 / sqrt(3)
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert mean_interval([0.7]) == (0.7, 0.0)


def test_exit_histogram() -> None:
    assert exit_histogram(np.array([0, 2, 2, 1, 2]), 4).tolist() == [1, 1, 3, 0]


def test_dis_counts_inversions() -> None:
    # confidence-positive signal; right = [T, F, T, F]; pairs (right, wrong): (0.9,0.8) ok, (0.9,0.1) ok,
    # (0.3,0.8) inverted, (0.3,0.1) ok -> 1 - 1/4 = 0.75
    signal = np.array([0.9, 0.8, 0.3, 0.1])
    right = np.array([True, False, True, False])
    assert difficulty_inversion_score(signal, right, confidence_positive=True) == pytest.approx(0.75)
    # the same ranking expressed as a difficulty-positive signal (entropy-like)
    assert difficulty_inversion_score(-signal, right, confidence_positive=False) == pytest.approx(0.75)
    assert math.isnan(difficulty_inversion_score(signal, np.ones(4, bool), True))


def test_exit_failure_rates() -> None:
    # 3 exits, 4 inputs leaving at exits 0, 1, 2, 2
    slots = np.array([0, 1, 2, 2])
    correct = np.array(
        [
            [False, True, True, False],  # exit 0: input 0 exits wrongly; inputs 1,2 continue while right
            [True, True, False, True],  # exit 1: input 1 exits rightly; input 2 continues (wrong), 3 (right)
            [True, True, True, True],  # the last exit takes no decision
        ]
    )
    rates = exit_failure_rates(slots, correct)
    assert rates["exit_decisions"] == 2 and rates["continue_decisions"] == 5
    assert rates["premature"] == pytest.approx(1 / 2)
    # continues: exit 0 inputs 1 (right), 2 (right), 3 (wrong); exit 1 inputs 2 (wrong), 3 (right)
    assert rates["delayed"] == pytest.approx(3 / 5)


def test_overthinking_rate() -> None:
    correct = np.array([[True, False, False], [False, False, True], [False, True, True]])
    # input 0: right at exit 0, wrong at the last -> overthinking; the others are right at the last
    assert overthinking_rate(correct) == pytest.approx(1 / 3)
