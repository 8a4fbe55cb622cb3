"""Never lose a user's work, never show a traceback (issue 10): one table of bad inputs.

Each case runs a real command and checks the exit code, that stderr is one line naming the bad value
(the flag, the file and line, or both sides of a mismatch), and that nothing the user had changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offramp.cli import main
from offramp.data import default_glue_dir
from offramp.io import folder_lock, stale_temporaries

GLUE = str(default_glue_dir())
SRC = str(Path(__file__).resolve().parents[1] / "src")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes (what "nothing changed" compares)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def work(tmp_path: Path, minilm_sst2_dir: Path) -> dict[str, Path]:
    """A model folder of the user's (with a report in it), and data files of several kinds."""
    model = tmp_path / "model"
    shutil.copytree(minilm_sst2_dir, model)
    (model / "report").mkdir()
    (model / "report" / "report.md").write_text("# my report\n")
    files = {"model": model}
    files["three"] = tmp_path / "three.csv"
    files["three"].write_text("text,label\nfine,a\nbad,b\nso-so,c\n")
    files["latin"] = tmp_path / "latin.csv"
    files["latin"].write_bytes(b"text,label\nfine,0\ncaf\xe9,1\n")
    files["latin_txt"] = tmp_path / "latin.txt"
    files["latin_txt"].write_bytes(b"a fine film\ncaf\xe9 cr\xe8me\n")
    files["texts"] = tmp_path / "texts.txt"
    files["texts"].write_text("a gripping film\ndull\n")
    files["picklebone"] = tmp_path / "picklebone"
    files["picklebone"].mkdir()
    (files["picklebone"] / "config.json").write_text('{"model_type": "bert"}')
    (files["picklebone"] / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    return files


def _train(out: str, *extra: str) -> list[str]:
    return ["train", "--task", "sst2", "--data-dir", GLUE, "--train-size", "16", "--val-size", "8",
            "--epochs", "1", "--no-progress", "--out", out, *extra]  # fmt: skip


# (id, argv built from the work files, expected message regex)
CASES: list[tuple[str, Callable[[dict[str, Path]], list[str]], str]] = [
    ("train into an existing folder",
     lambda w: _train(str(w["model"])), r"--out '.*model' already holds .*offramp\.json.*pass --overwrite"),
    ("exits out of order", lambda w: _train(str(w["model"].parent / "new"), "--exits", "3,1"),
     r"bad exit list '3,1': expected increasing layer numbers"),
    ("exits listed twice", lambda w: _train(str(w["model"].parent / "new"), "--exits", "2,2"),
     r"a layer is listed twice"),
    ("fractional val size above 1", lambda w: _train(str(w["model"].parent / "new"), "--val-size", "1.5"),
     r"--val-size 1\.5: expected a row count"),
    ("unknown backbone, offline",
     lambda w: _train(str(w["model"].parent / "new"), "--backbone", "nosuch-org/nosuch-model"),
     r"cannot load backbone 'nosuch-org/nosuch-model': not a short name \(minilm-l6, mpnet-base\)"),
    ("backbone with pickle weights only",
     lambda w: _train(str(w["model"].parent / "new"), "--backbone", str(w["picklebone"])),
     r"holds only pickle weights \(pytorch_model\.bin\) and offramp loads safetensors only"),
    ("evaluate on another task's labels",
     lambda w: ["evaluate", str(w["model"]), "--task", "rte", "--data-dir", GLUE],
     r"has 2 labels \['entailment', 'not_entailment'\] but the model was trained for 2 \['0', '1'\]"),
    ("evaluate on another task with the same labels",
     lambda w: ["evaluate", str(w["model"]), "--task", "mrpc", "--data-dir", GLUE],
     r"the model was trained on task 'sst2' but the data is task 'mrpc'"),
    ("calibrate on a 3-label file",
     lambda w: ["calibrate", str(w["model"]), "--data-file", str(w["three"]), "--text-columns", "text",
                "--target-speedup", "2"],
     r"has 3 labels \['a', 'b', 'c'\] but the model was trained for 2"),
    ("bench on another task",
     lambda w: ["bench", str(w["model"]), "--task", "mrpc", "--data-dir", GLUE, "--repeats", "1"],
     r"the model was trained on task 'sst2' but the data is task 'mrpc'"),
    ("a non-UTF-8 data file",
     lambda w: ["evaluate", str(w["model"]), "--data-file", str(w["latin"]), "--text-columns", "text"],
     r"line 3 of '.*latin\.csv' is not valid UTF-8"),
    ("a non-UTF-8 input file",
     lambda w: ["predict", str(w["model"]), str(w["latin_txt"])],
     r"'.*latin\.txt' line 2: byte 4 is not valid UTF-8"),
    ("an out-of-range threshold",
     lambda w: ["predict", str(w["model"]), str(w["texts"]), "--policy", "maxprob", "--threshold", "1.5"],
     r"tau=1\.5 out of range for signal 'maxprob'"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Any, work: dict[str, Path], capsys: Any) -> None:
    _, argv, message = case
    before = {k: snapshot(p) if p.is_dir() else p.read_bytes() for k, p in work.items()}
    siblings = sorted(p.name for p in work["model"].parent.iterdir())
    code = main(argv(work))
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert code == 2 and len(errors) == 1, err
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in "\n".join(err)
    after = {k: snapshot(p) if p.is_dir() else p.read_bytes() for k, p in work.items()}
    assert after == before, "a refused command changed the user's files"
    assert sorted(p.name for p in work["model"].parent.iterdir()) == siblings, "it left files behind"


def test_options_may_come_in_any_order(work: dict[str, Path], capsys: Any) -> None:
    argv = ["predict", str(work["model"]), "--policy", "maxprob", "--threshold", "0.9", str(work["texts"])]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2]
    assert {r["label"] for r in rows} <= {"negative", "positive"}  # SST-2's names, not "0"/"1"
    assert main([*argv, "--top-k", "1"]) == 0
    for row in map(json.loads, capsys.readouterr().out.splitlines()):
        assert list(row["probabilities"]) == [row["label"]]


def test_a_second_writer_fails_at_start(work: dict[str, Path], capsys: Any) -> None:
    out = work["model"].parent / "busy"
    other = subprocess.Popen(  # a real second process holds the folder's lock
        [sys.executable, "-c", f"import sys, time; sys.path.insert(0, {SRC!r})\n"
         f"from offramp.io import folder_lock\nwith folder_lock({str(out)!r}):\n"
         "    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "locked"
        assert main(_train(str(out))) == 2
        err = capsys.readouterr().err
        assert f"being written by another offramp process (pid {other.pid})" in err
        assert not out.exists()
    finally:
        other.kill()
        other.wait()
    with folder_lock(out):  # the dead holder's lock is gone with it
        pass


def test_a_run_killed_while_saving_leaves_the_old_folder_and_is_cleaned_up(
    work: dict[str, Path], capsys: Any
) -> None:
    model = work["model"]
    before = snapshot(model)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from offramp import model as m
        real = m.save_model
        def slow(module, path, *a, **k):
            real(module, path, *a, **k)
            print("saving", flush=True)
            time.sleep(60)
        m.save_model = slow
        m.MultiExitModel.load({str(model)!r}).save({str(model)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert snapshot(model) == before, "the killed save touched the existing model"
    stale = stale_temporaries(model)
    assert len(stale) == 1 and stale[0].name.startswith(".model.tmp-")
    assert main(_train(str(model))) == 2  # refused (the folder is the user's), but the debris is cleared
    assert "removed" in capsys.readouterr().err and stale_temporaries(model) == []
    assert snapshot(model) == before


def test_created_files_follow_the_umask(minilm_sst2: Any, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = minilm_sst2.save(tmp_path / "shared")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_editing_the_exits_invalidates_cached_outputs(work: dict[str, Path]) -> None:
    from offramp.data import load_glue, subsample
    from offramp.evaluate import outputs_fingerprint

    data = subsample(load_glue("sst2", GLUE, "dev"), 8, seed=0)
    before = outputs_fingerprint(work["model"], data, 64)
    config = work["model"] / "offramp.json"
    config.write_text(config.read_text().replace('"exits": [', '"exits": [ '))
    assert outputs_fingerprint(work["model"], data, 64) != before
