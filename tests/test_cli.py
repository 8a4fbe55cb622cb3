"""The `offramp` command end to end on a tiny real subset, and its one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from offramp import model as model_module
from offramp.cli import main
from offramp.data import default_glue_dir

GLUE = str(default_glue_dir())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "sst2"
    code = main(
        [
            "train", "--task", "sst2", "--data-dir", GLUE, "--train-size", "96", "--val-size", "32",
            "--epochs", "1", "--batch-size", "16", "--exits", "2,4,6", "--max-length", "48",
            "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_train_writes_a_loadable_model_and_log(trained: Path) -> None:
    config = json.loads((trained / "offramp.json").read_text())
    assert config["exits"] == [2, 4, 6]
    assert config["task"] == "sst2" and config["label_names"] == ["0", "1"]
    assert config["info"]["train_size"] == 96 and config["info"]["val_size"] == 32
    log = json.loads((trained / "train_log.json").read_text())
    assert len(log["epochs"]) == 1 and len(log["epochs"][0]["val"]) == 3


def test_evaluate_prints_table_and_writes_json(
    trained: Path, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(trained), "--data-dir", GLUE, "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and len(printed.strip().split("\n\n")[0].splitlines()) == 4
    report = json.loads(out.read_text())
    assert report["task"] == "sst2" and report["split"] == "dev" and report["examples"] == 872
    assert [e["layer"] for e in report["exits"]] == [2, 4, 6]
    assert all(0.0 <= e["score"] <= 1.0 for e in report["exits"])
    assert report["final"] == report["exits"][-1]


def test_evaluate_rejects_data_with_other_labels(trained: Path, capsys) -> None:
    assert main(["evaluate", str(trained), "--task", "rte", "--data-dir", GLUE, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "labels" in err and "not_entailment" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--task", "sst3"], "unknown task 'sst3'"),
        (["--task", "sst2", "--data-dir", "/no/such/dir"], "/no/such/dir"),
        (["--task", "sst2", "--backbone", "/no/such/model"], "cannot load backbone '/no/such/model'"),
        (["--task", "sst2", "--exits", "1,9"], "[9] out of range"),
        (["--task", "sst2", "--train-size", "0"], "--train-size 0"),
    ],
)
def test_train_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys, args: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    argv = ["train", "--out", str(out), "--no-progress", "--epochs", "1"]
    if "--data-dir" not in args:
        argv += ["--data-dir", GLUE]
    code = main(argv + args)
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_train_bad_label_in_a_file(tmp_path: Path, capsys) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood film,pos\nbad film,neg\nfine,maybe\n")
    code = main(
        ["train", "--data-file", str(data), "--text-columns", "text", "--label-column", "label",
         "--task", "sst2", "--out", str(tmp_path / "o"), "--no-progress"]
    )  # fmt: skip
    assert code == 2
    assert "'pos'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_failed_training_leaves_no_output_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        model_module, "save_model", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    )
    code = main(
        ["train", "--task", "sst2", "--data-dir", GLUE, "--train-size", "16", "--val-size", "8",
         "--epochs", "1", "--exits", "1", "--out", str(tmp_path / "o"), "--no-progress"]
    )  # fmt: skip
    assert code == 2 and "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_lists_commands(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "compare", "gradients", "predict", "calibrate", "bench"):
        assert re.search(rf"^\s+{command}\s+\w", out, re.MULTILINE), command
    for command in ("predict", "calibrate", "bench"):  # their own options load with the command
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--policy" in capsys.readouterr().out


def test_top_level_help_does_not_import_torch() -> None:
    code = "import sys; from offramp.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    code += "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
