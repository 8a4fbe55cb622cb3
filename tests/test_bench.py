"""The benchmark runs and reports consistent figures (no timing assertions: targets live in benchmarks/)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from offramp.bench import benchmark, format_report, parse_batch_sizes

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.single_thread


def test_benchmark_reports_every_figure(minilm_sst2: Any) -> None:
    texts = ["a gripping , beautiful film", "dull", "the worst movie of the year", "fine", "not bad at all"]
    result = benchmark(minilm_sst2, texts, batch_sizes=(1, 2), policy="maxprob", threshold=0.7, repeats=1,
                       warmup_batches=1)  # fmt: skip
    report = result.to_json()
    assert report["examples"] == 5 and report["depth"] == 6 and report["policy"]["name"] == "threshold"
    for entry in report["batch_sizes"].values():
        assert set(entry["seconds"]) == {"early_exit", "full", "stock"}
        assert 1.0 <= entry["layer_count_speedup"] <= 6.0
        assert sum(entry["exit_counts"]) == 5
        keys = ("measured_speedup_vs_full", "measured_speedup_vs_stock", "ratio_vs_full", "ratio_vs_stock")
        for key in keys:
            assert math.isfinite(entry[key]) and entry[key] > 0
        assert entry["ratio_vs_full"] == pytest.approx(
            entry["measured_speedup_vs_full"] / entry["layer_count_speedup"]
        )
    assert "vs stock" in format_report(result)
    json.dumps(report)


def test_bench_cli_writes_json(minilm_sst2_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from offramp.cli import main

    out = tmp_path / "bench.json"
    args = ["bench", str(minilm_sst2_dir), "--task", "sst2", "--max-samples", "4", "--repeats", "1",
            "--batch-sizes", "1,4", "--policy", "entropy", "--threshold", "0.4",
            "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert set(report["batch_sizes"]) == {"1", "4"} and report["split"] == "dev"
    assert "accuracy" == report["batch_sizes"]["1"]["metric"]
    assert "layers x" in capsys.readouterr().out
    assert main([*args[:-2], "--batch-sizes", "1,zero"]) == 2
    assert "--batch-sizes '1,zero': expected comma-separated positive integers" in capsys.readouterr().err


def test_parse_batch_sizes() -> None:
    assert parse_batch_sizes("1, 64") == [1, 64]
    with pytest.raises(ValueError, match="expected comma-separated positive integers"):
        parse_batch_sizes("0")
