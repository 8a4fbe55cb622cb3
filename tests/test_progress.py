"""Progress output: whole lines in a piped log (no carriage-return redraws), a bar on a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from offramp.progress import LineProgress, progress_bar


def test_piped_progress_prints_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress_bar(range(5), desc="evaluating", log_seconds=0.0)
    assert isinstance(bar, LineProgress)
    assert list(bar) == [0, 1, 2, 3, 4]
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue() and lines[-1] == "evaluating: 5/5 (100%)"
    assert len(lines) == 6  # one per step with log_seconds=0, and the closing line


def test_piped_progress_is_quiet_between_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress_bar(total=100, desc="epoch 1/1") as bar:
        for _ in range(100):
            bar.update(1)
            bar.set_postfix(loss="0.5")
    assert err.getvalue().splitlines() == ["epoch 1/1: 100/100 (100%) loss=0.5"]


def test_disabled_progress_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress_bar(range(3), desc="x", enabled=False)) == [0, 1, 2]
    assert err.getvalue() == ""
