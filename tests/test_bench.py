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


def test_baselines_are_timed_and_scored_on_the_same_inputs(minilm_sst2: Any) -> None:
    """Issue 13: the alternatives a user would pick (other attention, truncation, torch int8) sit next to
    early exit with their accuracy; a method equal to the full model agrees with it everywhere."""
    from offramp.data import default_glue_dir, load_glue

    dev = load_glue("sst2", default_glue_dir(), "dev").select(range(24))
    result = benchmark(minilm_sst2, dev, batch_sizes=(8,), policy="maxprob", threshold=0.7, repeats=1,
                       warmup_batches=1, baselines=("attention", "truncated", "torch_int8"))  # fmt: skip
    timing = result.batch_sizes[8]
    other = "stock_eager" if result.meta["attention"] != "eager" else "stock_sdpa"
    assert {"early_exit", "full", "stock", other, "truncated", "stock_int8"} <= set(timing.seconds)
    assert set(timing.method_scores) == set(timing.seconds)
    assert all(0.0 <= v <= 1.0 for v in timing.method_scores.values())
    # stock fp32 (either attention) computes what the full model does
    assert timing.method_agreement["stock"] == 1.0 and timing.method_agreement[other] == 1.0
    assert (
        timing.method_scores["full"] == timing.full_score
        and timing.method_scores["early_exit"] == timing.score
    )
    entry = result.to_json()["batch_sizes"]["8"]
    assert entry["speedup_vs_stock"]["stock"] == 1.0
    assert "truncated" in format_report(result)


def test_unknown_baseline_is_named(minilm_sst2: Any) -> None:
    with pytest.raises(ValueError, match="'onnx'.*attention"):
        benchmark(minilm_sst2, ["fine"], batch_sizes=(1,), baselines=("onnx",))


def test_onnx_runtime_baselines_agree_with_the_full_model(minilm_sst2: Any) -> None:
    """The full model as one ONNX Runtime graph (fp32) labels what eager does; int8 nearly so."""
    from offramp.data import default_glue_dir, load_glue

    dev = load_glue("sst2", default_glue_dir(), "dev").select(range(16))
    result = benchmark(minilm_sst2, dev, batch_sizes=(8,), repeats=1, warmup_batches=0,
                       baselines=("ort_fp32", "ort_int8"))  # fmt: skip
    timing = result.batch_sizes[8]
    assert {"ort_fp32", "ort_int8"} <= set(timing.seconds)
    assert timing.method_agreement["ort_fp32"] == 1.0
    assert timing.method_agreement["ort_int8"] >= 0.8
