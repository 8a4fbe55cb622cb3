"""GLUE metrics against values computed by hand on small lists."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from offramp.data import DataError
from offramp.metrics import primary_metric, task_metrics


@pytest.mark.parametrize("task", ["sst2", "SST-2", "rte", "qnli", "mnli", "mnli-mm", "wnli"])
def test_accuracy_tasks(task: str) -> None:
    # 3 of 4 right.
    assert task_metrics(task, [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 0.75}


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_and_accuracy(task: str) -> None:
    # tp=2 (rows 0, 1), fp=1 (row 2), fn=1 (row 3), tn=1 (row 4): precision = recall = 2/3 -> F1 = 2/3.
    out = task_metrics(task, [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert list(out) == ["f1", "accuracy"]
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(3 / 5)


def test_matthews_for_cola() -> None:
    # Same confusion matrix: (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))
    #   = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6.
    out = task_metrics("cola", [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert out == {"matthews_corrcoef": pytest.approx(1 / 6)}
    assert task_metrics("CoLA", [1, 0, 1], [1, 0, 1])["matthews_corrcoef"] == pytest.approx(1.0)


def test_pearson_and_spearman_for_stsb() -> None:
    # x = [1, 2, 3], y = [1, 3, 2]: centred x = [-1, 0, 1], y = [-1, 1, 0]; cov = 1, var = 2 and 2 -> r = 0.5.
    # The values are their own ranks, so Spearman is 0.5 as well.
    out = task_metrics("sts-b", [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert out == {"pearson": pytest.approx(0.5), "spearmanr": pytest.approx(0.5)}
    # Monotone but not linear: Spearman 1, Pearson below 1.
    mono = task_metrics("stsb", [1.0, 4.0, 9.0, 16.0], [1.0, 2.0, 3.0, 4.0])
    assert mono["spearmanr"] == pytest.approx(1.0) and mono["pearson"] < 1.0
    assert mono["pearson"] == pytest.approx(np.corrcoef([1, 4, 9, 16], [1, 2, 3, 4])[0, 1])


def test_logits_and_column_regression_outputs() -> None:
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])  # argmax -> [1, 0, 1]
    assert task_metrics("sst2", logits, [1, 0, 0]) == {"accuracy": pytest.approx(2 / 3)}
    assert task_metrics("sst2", torch.tensor(logits), torch.tensor([1, 0, 1])) == {"accuracy": 1.0}
    col = np.array([[1.0], [2.0], [3.0]])
    assert task_metrics("stsb", col, [2.0, 4.0, 6.0])["pearson"] == pytest.approx(1.0)


def test_without_a_task() -> None:
    assert task_metrics(None, [0, 2, 1], [0, 2, 2]) == {"accuracy": pytest.approx(2 / 3)}
    reg = task_metrics(None, [1.0, 2.0, 3.0], [1.0, 3.0, 2.0], regression=True)
    assert reg == {"pearson": pytest.approx(0.5), "spearmanr": pytest.approx(0.5)}
    assert task_metrics("regression", [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])["pearson"] == pytest.approx(0.5)
    assert task_metrics("classification", [1, 1], [1, 0]) == {"accuracy": 0.5}


def test_primary_metric() -> None:
    expected = {
        "sst2": "accuracy",
        "rte": "accuracy",
        "qnli": "accuracy",
        "mnli": "accuracy",
        "wnli": "accuracy",
        "mrpc": "f1",
        "qqp": "f1",
        "cola": "matthews_corrcoef",
        "stsb": "pearson",
        "STS-B": "pearson",
    }
    assert {t: primary_metric(t) for t in expected} == expected
    assert primary_metric(None) == "accuracy" and primary_metric(None, regression=True) == "pearson"


def test_edge_cases() -> None:
    assert math.isnan(task_metrics("stsb", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["pearson"])
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        task_metrics("sst2", [1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no predictions"):
        task_metrics("sst2", [], [])
    with pytest.raises(DataError, match="unknown task 'glue'"):
        task_metrics("glue", [1], [1])
