"""The CLI on images (issue 14): train, evaluate, calibrate, bench and predict round trips on tiny data.

Real sklearn digits (8x8) and a tiny CIFAR ResNet (resnet8-cifar: 3 blocks, so 3 exits) or a ViT, one
epoch on a few dozen images: seconds on a CPU. What is checked is the plumbing (flags, recorded
source, files written, labels by name, exit layers), not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from offramp.cli import main
from offramp.data import load_digits

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = ["--epochs", "1", "--train-size", "96", "--val-size", "48", "--no-progress"]


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "digits-resnet"
    assert main(["train", "--digits", "--backbone", "resnet8-cifar", *TINY, "--out", str(out)]) == 0
    return out


def write_pngs(folder: Path, count: int) -> list[Path]:
    """The first ``count`` real digits as grey PNG files."""
    digits = load_digits()
    paths = []
    for i in range(count):
        paths.append(folder / f"{digits.labels[i]}-{i}.png")
        Image.fromarray(digits.images[i, :, :, 0]).save(paths[-1])
    return paths


def test_train_records_the_image_source(resnet_dir: Path) -> None:
    config = json.loads((resnet_dir / "offramp.json").read_text())
    assert config["exits"] == [1, 2, 3] and config["label_names"] == [str(d) for d in range(10)]
    assert config["info"]["images"] == {"kind": "digits", "size": [8, 8], "channels": 1}
    assert (config["info"]["train_size"], config["info"]["val_size"]) == (96, 48)
    train = config["info"]["train"]["config"]
    assert (train["lr"], train["batch_size"], train["flip"]) == (0.1, 128, False)  # the image recipe
    assert len(config["pixel_mean"]) == 1 and 0.2 < config["pixel_mean"][0] < 0.4


def test_evaluate_calibrate_bench_use_the_recorded_source(resnet_dir: Path, capsys: Any) -> None:
    assert (
        main(["evaluate", str(resnet_dir), "--grid-size", "5", "--policies", "maxprob", "--no-progress"]) == 0
    )
    report = json.loads((resnet_dir / "eval_sklearn-digits_dev.json").read_text())
    assert report["examples"] == 359  # the 20% test rows held out of the 1,797 digits
    assert main(["calibrate", str(resnet_dir), "--target-speedup", "1.4", "--no-progress"]) == 0
    assert "held-out 48 rows" in capsys.readouterr().err
    policy = json.loads((resnet_dir / "offramp.json").read_text())["policy"]
    assert policy["name"] == "threshold" and policy["params"]["signal"] == "maxprob"
    bench = ["bench", str(resnet_dir), "--batch-sizes", "1,16", "--repeats", "1", "--warmup-batches", "1"]
    assert main([*bench, "--max-samples", "32", "--no-progress"]) == 0
    figures = json.loads((resnet_dir / "bench_data_dev.json").read_text())
    assert figures["examples"] == 32 and set(figures["batch_sizes"]) == {"1", "16"}


def test_predict_labels_image_files_by_name(resnet_dir: Path, tmp_path: Path, capsys: Any) -> None:
    files = write_pngs(tmp_path, 3)
    assert main(["predict", str(resnet_dir), *map(str, files), "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert all(r["label"] in [str(d) for d in range(10)] and r["exit_layer"] in (1, 2, 3) for r in rows)
    assert all(len(r["probabilities"]) == 2 for r in rows)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(big)  # resized to the model's 8x8
    assert main(["predict", str(resnet_dir), str(big)]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == str(big)


def test_image_folder_with_train_and_test_and_a_vit(tmp_path: Path) -> None:
    """--image-dir with train/ and test/ folders of RGB PNGs (zeros and ones), a ViT backbone."""
    digits = load_digits()
    for split, rows in (("train", range(0, 300)), ("test", range(300, 400))):
        for i in (i for i in rows if digits.labels[i] in (0, 1)):
            folder = tmp_path / "data" / split / f"class{digits.labels[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.dstack([digits.images[i, :, :, 0]] * 3)).save(folder / f"{i}.png")
    out = tmp_path / "vit"
    args = ["--image-dir", str(tmp_path / "data"), "--backbone", "vit-micro", "--exits", "3,6"]
    assert main(["train", *args, "--epochs", "1", "--val-size", "8", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "offramp.json").read_text())
    assert config["label_names"] == ["class0", "class1"] and config["exits"] == [3, 6]
    assert config["info"]["images"]["channels"] == 3 and config["info"]["train"]["config"]["flip"]
    assert config["info"]["train"]["config"]["lr"] == 0.01  # the ViT default
    assert main(["evaluate", str(out), "--grid-size", "5", "--policies", "maxprob", "--no-progress"]) == 0
    tests = sum(1 for i in range(300, 400) if digits.labels[i] in (0, 1))
    assert json.loads((out / "eval_test_dev.json").read_text())["examples"] == tests


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--digits", "--mnist-sample", "--out", "{tmp}/x"], "--mnist-sample and --digits"),
        (["train", "--digits", "--learned-exit", "--out", "{tmp}/x"], "--learned-exit is not supported"),
        (
            ["train", "--digits", "--backbone", "resnet9-cifar", "--out", "{tmp}/x"],
            "depth 9: expected 6n + 2",
        ),
        (["train", "--digits", "--epochs", "0.5", "--out", "{tmp}/x"], "--epochs 0.5"),
        (["train", "--cifar-dir", "{tmp}", "--out", "{tmp}/x"], "no CIFAR binary files in"),
        (["evaluate", "{model}", "--mnist-sample"], "28x28 images; the model was trained on 8x8"),
        (["evaluate", "{model}", "--split", "train2"], "image split 'train2'"),
        (["predict", "{model}", "{tmp}/notes.txt"], "cannot read image"),
    ],
)
def test_bad_image_input_is_one_clear_line(
    argv: list[str], message: str, resnet_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    argv = [a.format(tmp=tmp_path, model=resnet_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
