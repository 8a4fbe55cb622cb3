"""Checks and conversions shared by the loaders: column names, texts, and labels to class ids."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import DataError


def text_columns_of(text_columns: str | Sequence[str] | None) -> tuple[str, ...]:
    """One or two text column names as a tuple."""
    if text_columns is None:
        raise DataError(
            "no text columns given; expected one or two column names (--text-columns 'sentence' or "
            "'question,sentence' on the command line, text_columns= in Python)"
        )
    cols = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if len(cols) not in (1, 2):
        raise DataError(f"text columns {list(cols)!r}: expected one or two column names (--text-columns)")
    return cols


def check_columns(wanted: Iterable[str], found: Sequence[str], source: str) -> None:
    """Raise :class:`DataError` naming the first column of ``wanted`` missing from ``found``."""
    for col in wanted:
        if col not in found:
            raise DataError(f"column {col!r} not found in {source}; columns found: {list(found)}")


def clean_text(value: Any, column: str, where: str) -> str:
    """``value`` as a stripped, non-empty string."""
    text = "" if value is None else str(value)
    text = text.strip()
    if not text:
        raise DataError(f"empty text in column {column!r} at {where}; expected a non-blank string")
    return text


def _label_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def infer_label_names(keys: Iterable[str]) -> list[str]:
    """The distinct labels in a fixed order: numerically when all are integers, else alphabetically.

    The alphabetical order ignores case (``Neg`` before ``pos``); labels equal but for case are
    ordered by their exact spelling, so the result never depends on the order of the rows.
    """
    unique = set(keys)
    try:
        return sorted(unique, key=lambda k: (int(k), k))
    except ValueError:
        return sorted(unique, key=lambda k: (k.casefold(), k))


def _regression_targets(raw: Sequence[Any], where: Any) -> list[float]:
    out: list[float] = []
    for i, value in enumerate(raw):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or isinstance(value, bool):
            raise DataError(
                f"regression label {value!r} at {where(i)} is not numeric; expected a finite number"
            )
        out.append(number)
    return out


def encode_labels(
    raw: Sequence[Any],
    wheres: Sequence[str] | None,
    label_names: Sequence[str] | None,
    regression: bool,
    source: str,
) -> tuple[list[int] | list[float], list[str] | None]:
    """Turn raw label values into class ids (or floats) and the ordered label names.

    ``wheres[i]`` says where row ``i`` came from, for error messages. Without ``label_names`` the
    names are inferred with :func:`infer_label_names`.
    """

    def where(i: int) -> str:
        return wheres[i] if wheres is not None else f"row {i} of {source}"

    if regression:
        return _regression_targets(raw, where), None
    keys = [_label_key(v) for v in raw]
    names = [str(n) for n in label_names] if label_names is not None else infer_label_names(keys)
    if len(set(names)) != len(names):
        raise DataError(f"label names {names} contain duplicates; expected distinct names")
    ids = {name: i for i, name in enumerate(names)}
    labels: list[int] = []
    for i, key in enumerate(keys):
        if key not in ids:
            raise DataError(f"label {raw[i]!r} at {where(i)} is not one of the allowed labels {names}")
        labels.append(ids[key])
    return labels, names
