"""The error and the warning every part of :mod:`offramp.data` raises."""

from __future__ import annotations

__all__ = ["DataError", "TruncationWarning"]


class DataError(ValueError):
    """The input data (task, path, columns, labels or texts) is not what was expected."""


class TruncationWarning(UserWarning):
    """Some rows were longer than ``max_length`` tokens and were cut."""
