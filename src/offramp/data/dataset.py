"""The in-memory dataset type, and deterministic subsets of it."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError

__all__ = ["TextDataset", "subsample", "train_val_split"]


@dataclass
class TextDataset:
    """Rows of one or two texts with optional labels.

    ``labels`` holds class ids (positions in ``label_names``) for classification, floats for
    regression, or is ``None`` for unlabelled data (e.g. GLUE test files). ``label_names=None``
    means regression. ``task`` is the canonical GLUE task name when known, so metrics can be chosen.
    """

    texts: list[tuple[str, ...]]
    labels: list[int] | list[float] | None = None
    label_names: list[str] | None = None
    task: str | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise DataError(
                f"{len(self.labels)} labels for {len(self.texts)} texts; expected one label per row"
            )
        if self.texts:
            widths = {len(t) for t in self.texts}
            if len(widths) != 1 or not widths <= {1, 2}:
                raise DataError(f"rows hold {sorted(widths)} texts; expected 1 or 2 texts in every row")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def is_regression(self) -> bool:
        """True when the targets are real numbers (``label_names is None``)."""
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Number of classes; 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """True when every row holds two texts (sentence pairs)."""
        return bool(self.texts) and len(self.texts[0]) == 2

    def select(self, indices: Iterable[int]) -> TextDataset:
        """A new dataset with the rows at ``indices``, in that order."""
        idx = [int(i) for i in indices]
        n = len(self.texts)
        for i in idx:
            if not -n <= i < n:
                raise IndexError(f"row index {i} out of range for a dataset of {n} rows")
        labels = None if self.labels is None else [self.labels[i] for i in idx]
        return TextDataset(
            texts=[self.texts[i] for i in idx],
            labels=labels,
            label_names=None if self.label_names is None else list(self.label_names),
            task=self.task,
            source=self.source,
        )


def subsample(ds: TextDataset, n: int | None, seed: int = 0) -> TextDataset:
    """``n`` rows drawn without replacement, deterministically from ``seed``.

    The rows are the first ``n`` of ``numpy.random.default_rng(seed).permutation(len(ds))``, returned
    in their original order, so a larger ``n`` with the same seed gives a superset. ``n=None`` or
    ``n >= len(ds)`` returns all rows in the original order (``ds`` itself); ``n > len(ds)`` also
    warns (``UserWarning``) that all rows are used.
    """
    if n is None or n == len(ds):
        return ds
    if n < 0:
        raise DataError(f"subsample size {n} is negative; expected a count >= 0")
    if n > len(ds):
        where = f" of {ds.source}" if ds.source else ""
        warnings.warn(
            f"subsample size {n} is more than the {len(ds)} rows{where}; using all {len(ds)} rows",
            UserWarning,
            stacklevel=2,
        )
        return ds
    perm = np.random.default_rng(seed).permutation(len(ds))
    return ds.select(sorted(perm[:n].tolist()))


def _val_count(val_size: int | float, n: int) -> int:
    """The number of validation rows ``val_size`` asks for out of ``n``."""
    expected = "expected an int count >= 1 or a float fraction in (0, 1)"
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise DataError(f"val_size {val_size!r}: {expected}")
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 < val_size < 1.0:  # 1.5 is neither a whole count nor a fraction
            raise DataError(f"val_size {val_size!r}: {expected}")
        k = max(1, int(round(val_size * n)))
    elif val_size < 1:
        raise DataError(f"val_size {val_size!r}: {expected}")
    else:
        k = int(val_size)
    if k >= n:
        raise DataError(
            f"val_size {val_size!r} takes {k} of {n} rows and leaves none for training; "
            f"expected 1..{n - 1} rows"
        )
    return k


def train_val_split(ds: TextDataset, val_size: int | float, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """Carve a validation split out of a training set for model selection and calibration.

    ``val_size`` is a row count (int >= 1) or a fraction (float in (0, 1), rounded, at least one row);
    anything else, or a size leaving no training rows, raises :class:`DataError`. Rows are assigned
    by ``numpy.random.default_rng(seed).permutation``; both parts keep the original row order, are
    disjoint and together cover ``ds``. GLUE dev sets stay the untouched evaluation set.
    """
    n = len(ds)
    k = _val_count(val_size, n)
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = sorted(perm[:k].tolist())
    train_idx = sorted(perm[k:].tolist())
    return ds.select(train_idx), ds.select(val_idx)
