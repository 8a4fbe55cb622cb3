"""Image data (issue 14): the bundled real images, the CIFAR binary format, image folders, bad files.

CIFAR files are written here in the exact binary layout from real pixels (sklearn digits upsampled to
32x32 and given three different channels, so a swapped channel or plane order cannot round-trip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from offramp.data import (
    DataError,
    ImageDataset,
    load_cifar_binary,
    load_digits,
    load_image_files,
    load_image_folder,
    load_mnist_sample,
)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


def cifar_images(digits: ImageDataset, n: int, offset: int = 0) -> np.ndarray:
    """``n`` real digit images as uint8 [n, 32, 32, 3]: 4x nearest upsampling, three distinct channels."""
    grey = digits.images[offset : offset + n, :, :, 0]
    big = np.kron(grey, np.ones((1, 4, 4), dtype=np.uint8))
    return np.stack([big, 255 - big, big // 2 + 7], axis=-1)


def cifar_bytes(images: np.ndarray, *label_columns: np.ndarray) -> bytes:
    """Records of the binary distribution: label byte(s), then the red, green and blue 32x32 planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    labels = np.stack(label_columns, axis=1).astype(np.uint8)
    return np.concatenate([labels, planes], axis=1).tobytes()


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture()
def cifar10(tmp_path: Path, digits: ImageDataset) -> tuple[Path, np.ndarray, np.ndarray]:
    """A ``cifar-10-batches-bin`` folder: 5 train batches of 4 images, a test batch of 3, the names file."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    images = cifar_images(digits, 23)
    labels = digits.labels[:23]
    for b in range(5):
        part = slice(4 * b, 4 * b + 4)
        (folder / f"data_batch_{b + 1}.bin").write_bytes(cifar_bytes(images[part], labels[part]))
    (folder / "test_batch.bin").write_bytes(cifar_bytes(images[20:], labels[20:]))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return folder, images, labels


def test_mnist_sample_is_the_real_5k_sample() -> None:
    ds = load_mnist_sample()
    assert ds.images.shape == (5000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [500] * 10
    assert ds.label_names == [str(d) for d in range(10)]
    assert ds.images.max() == 255 and ds.images.min() == 0
    # MNIST's well-known statistics: mean ~0.13, std ~0.31 of [0, 1] pixels
    assert 0.11 < ds.mean[0] < 0.15 and 0.28 < ds.std[0] < 0.33
    # a digit "1" has fewer ink pixels than a "0" on average
    ink = (ds.images > 127).reshape(5000, -1).sum(1)
    assert ink[ds.labels == 1].mean() < 0.6 * ink[ds.labels == 0].mean()


def test_digits_scale_sklearn_levels(digits: ImageDataset) -> None:
    from sklearn.datasets import load_digits as sk

    raw = sk()
    assert digits.images.shape == (1797, 8, 8, 1)
    assert np.array_equal(digits.images[..., 0], np.rint(raw.images * 255 / 16).astype(np.uint8))
    assert np.array_equal(digits.labels, raw.target)


def test_split_subset_and_pixels(digits: ImageDataset) -> None:
    train, held = digits.split(300, seed=3)
    assert (len(train), len(held)) == (1497, 300)
    again = digits.split(300, seed=3)[1]
    assert np.array_equal(held.images, again.images)
    both = np.concatenate([train.images, held.images]).reshape(1797, -1)
    assert len(np.unique(both, axis=0)) == len(np.unique(digits.images.reshape(1797, -1), axis=0))
    assert train.mean == digits.mean and held.std == digits.std
    x = digits.pixels()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-4
    sub = digits.subset([5, 2])
    want = (digits.images[[5, 2]].transpose(0, 3, 1, 2) / 255.0 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(sub.pixels(), torch.from_numpy(want).float(), atol=1e-6)
    assert torch.equal(digits.pixels([5, 2]), sub.pixels())
    assert sub.labels.tolist() == digits.labels[[5, 2]].tolist()
    other = ImageDataset(digits.images[:10] // 2, digits.labels[:10], digits.label_names)
    assert other.mean != digits.mean and other.normalized_like(digits).mean == digits.mean


def test_image_dataset_rejects_bad_arrays() -> None:
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(np.zeros((2, 8, 8, 1), dtype=np.float32))
    with pytest.raises(DataError, match="3 labels for 2 images"):
        ImageDataset(np.zeros((2, 8, 8, 1), dtype=np.uint8), np.array([0, 1, 1]), ["a", "b"])
    with pytest.raises(DataError, match="label 5 is out of range"):
        ImageDataset(np.zeros((2, 8, 8, 1), dtype=np.uint8), np.array([0, 5]), ["a", "b"])
    with pytest.raises(DataError, match="n_heldout 2"):
        ImageDataset(np.zeros((2, 8, 8, 1), dtype=np.uint8)).split(2)
    with pytest.raises(IndexError, match="row index 7"):
        ImageDataset(np.zeros((2, 8, 8, 1), dtype=np.uint8)).subset([7])


def test_cifar10_binary_round_trip(cifar10: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, images, labels = cifar10
    train = load_cifar_binary(folder, "train")
    assert train.images.shape == (20, 32, 32, 3)
    assert np.array_equal(train.images, images[:20]) and np.array_equal(train.labels, labels[:20])
    assert train.label_names == CIFAR10_NAMES
    test = load_cifar_binary(folder.parent, "test")  # the folder holding cifar-10-batches-bin
    assert np.array_equal(test.images, images[20:]) and test.labels.tolist() == labels[20:].tolist()
    one = load_cifar_binary(folder / "data_batch_2.bin")
    assert np.array_equal(one.images, images[4:8])
    # channel statistics of the training set: red and green planes are complements
    assert abs(train.mean[0] + train.mean[1] - 1.0) < 1e-9 and abs(train.std[0] - train.std[1]) < 1e-9


def test_cifar100_binary_fine_and_coarse(tmp_path: Path, digits: ImageDataset) -> None:
    images = cifar_images(digits, 6, offset=100)
    fine = np.array([0, 99, 42, 7, 13, 58])
    coarse = np.array([4, 19, 0, 11, 3, 8])
    (tmp_path / "train.bin").write_bytes(cifar_bytes(images[:4], coarse[:4], fine[:4]))
    (tmp_path / "test.bin").write_bytes(cifar_bytes(images[4:], coarse[4:], fine[4:]))
    (tmp_path / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)))
    train = load_cifar_binary(tmp_path, "train")
    assert np.array_equal(train.images, images[:4]) and train.labels.tolist() == fine[:4].tolist()
    assert train.label_names[99] == "fine99" and train.num_labels == 100
    test = load_cifar_binary(tmp_path, "test", coarse=True)
    assert test.labels.tolist() == coarse[4:].tolist()
    assert test.label_names == [str(i) for i in range(20)]  # no coarse names file: numbered classes


def test_cifar_bad_files(cifar10: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    folder, _, _ = cifar10
    with pytest.raises(DataError, match="split 'validation' is not one of train, test"):
        load_cifar_binary(folder, "validation")
    with pytest.raises(DataError, match="coarse=True"):
        load_cifar_binary(folder, coarse=True)
    batch = folder / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1])  # truncated by one byte
    truncated = r"data_batch_3\.bin.* 12291 bytes, not a positive multiple of the 3073"
    with pytest.raises(DataError, match=truncated):
        load_cifar_binary(folder)
    batch.unlink()
    with pytest.raises(DataError, match=r"data_batch_3\.bin missing"):
        load_cifar_binary(folder, "train")
    test = folder / "test_batch.bin"
    test.write_bytes(bytes([12]) + test.read_bytes()[1:])
    with pytest.raises(DataError, match="record 0 has label 12; expected 0..9"):
        load_cifar_binary(folder, "test")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no CIFAR binary files in .*empty"):
        load_cifar_binary(empty)
    with pytest.raises(DataError, match="not found"):
        load_cifar_binary(tmp_path / "nowhere")
    odd = tmp_path / "batch.bin"
    odd.write_bytes(b"\0" * 3073)
    with pytest.raises(DataError, match="cannot tell the CIFAR version"):
        load_cifar_binary(odd)


def write_png_folder(root: Path, digits: ImageDataset, per_class: int) -> list[np.ndarray]:
    """Class folders ``zero``, ``one``, ``two`` of grey PNGs from real digits; their pixels by class."""
    out = []
    for name, digit in (("zero", 0), ("one", 1), ("two", 2)):
        (root / name).mkdir(parents=True)
        pixels = digits.images[digits.labels == digit][:per_class, :, :, 0]
        for i, image in enumerate(pixels):
            Image.fromarray(image, mode="L").save(root / name / f"{i:03d}.png")
        out.append(pixels)
    return out


def test_image_folder_round_trip(tmp_path: Path, digits: ImageDataset) -> None:
    root = tmp_path / "digits"
    by_class = write_png_folder(root, digits, 4)
    (root / "README.txt").write_text("top-level files are not images of a class")
    (root / "one" / ".DS_Store").write_bytes(b"\0\1")
    ds = load_image_folder(root)
    assert ds.label_names == ["one", "two", "zero"]  # sorted folder names
    assert ds.images.shape == (12, 8, 8, 1) and ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert np.array_equal(ds.images[:4, :, :, 0], by_class[1])
    assert np.array_equal(ds.images[8:, :, :, 0], by_class[0])
    rgb = root / "two" / "colour.png"
    Image.fromarray(np.dstack([by_class[2][0]] * 3), mode="RGB").save(rgb)
    mixed = load_image_folder(root)
    assert mixed.images.shape == (13, 8, 8, 3)  # one colour file makes the set RGB
    assert np.array_equal(mixed.images[4, :, :, 1], by_class[2][0])
    big = load_image_files([rgb], image_size=(16, 12), mode="L")
    assert big.shape == (1, 16, 12, 1)


def test_image_folder_bad_files(tmp_path: Path, digits: ImageDataset) -> None:
    root = tmp_path / "digits"
    write_png_folder(root, digits, 2)
    notes = root / "one" / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(DataError, match=r"cannot read image .*notes\.txt"):
        load_image_folder(root)
    notes.unlink()
    broken = root / "two" / "001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match=r"cannot read image .*two/001\.png"):
        load_image_folder(root)
    broken.unlink()
    Image.fromarray(np.zeros((9, 8), dtype=np.uint8), mode="L").save(root / "zero" / "tall.png")
    with pytest.raises(DataError, match=r"tall\.png' is 8x9 \(WxH\) but the first is 8x8"):
        load_image_folder(root)
    assert load_image_folder(root, image_size=8).images.shape == (6, 8, 8, 1)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*empty' holds no images"):
        load_image_folder(root)
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        load_image_folder(tmp_path / "bare")
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(DataError, match="image mode 'CMYK'"):
        load_image_files([root / "one" / "000.png"], mode="CMYK")
