"""Reading delimited (CSV, TSV) and JSON files into rows, with line numbers for error messages.

Files are read as UTF-8 (a leading byte-order mark is dropped). Every problem raises a one-line
:class:`DataError` naming the file and the line.
"""

from __future__ import annotations

import csv
import ctypes
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import DataError

#: The largest field the csv module can be told to accept (its limit is a C long).
_FIELD_LIMIT = min(sys.maxsize, 2 ** (8 * ctypes.sizeof(ctypes.c_long) - 1) - 1)


def _allow_large_fields() -> None:
    """Lift the csv module's 131,072-character field limit (process-wide; it is only ever raised)."""
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)


def utf8_error(path: Path) -> DataError:
    """A :class:`DataError` naming the first line of ``path`` that is not valid UTF-8."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return DataError(
                    f"line {line_no} of {str(path)!r} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                    f"column {exc.start + 1}); expected a UTF-8 text file"
                )
    return DataError(f"{str(path)!r} is not valid UTF-8; expected a UTF-8 text file")


def read_delimited(
    path: Path, *, tsv: bool, header: bool = True, columns: Sequence[str] | None = None
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a CSV (standard quoting) or TSV (quoting disabled, as GLUE needs) file.

    Returns the column names (from the header row, else ``columns``) and ``(line_number, fields)``
    for each non-blank row, the line number being the row's first line (a quoted CSV field may span
    lines). The encoding is ``utf-8-sig`` so a byte-order mark never reaches a name.
    """
    _allow_large_fields()
    kind = "TSV" if tsv else "CSV"
    line = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(fh)
            names = next(reader, None) if header else list(columns or ())
            if names is None:
                raise DataError(f"file {str(path)!r} is empty; expected a header row")
            rows: list[tuple[int, list[str]]] = []
            line = reader.line_num + 1
            for fields in reader:
                if fields and fields != [""]:
                    rows.append((line, fields))
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise utf8_error(path) from None
    except csv.Error as exc:
        raise DataError(f"line {line} of {str(path)!r} is not valid {kind} ({exc})") from None
    if not rows:
        raise DataError(f"file {str(path)!r} has no data rows; expected at least one row after the header")
    return names, rows


def read_json_records(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Records of a JSON-lines file (or a single JSON array) with their line (or item) numbers.

    Also returns the first record's keys, which stand for the file's columns.
    """
    try:
        with open(path, encoding="utf-8-sig") as fh:
            content = fh.read()
    except UnicodeDecodeError:
        raise utf8_error(path) from None
    records: list[tuple[int, dict]] = []
    if content.lstrip().startswith("["):
        try:
            items = json.loads(content)
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        records = [(i + 1, item) for i, item in enumerate(items)]
    else:
        for line_no, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"line {line_no} of {str(path)!r} is not valid JSON ({exc.msg})") from None
    for line_no, rec in records:
        if not isinstance(rec, dict):
            kind = type(rec).__name__
            raise DataError(f"line {line_no} of {str(path)!r} holds {kind}; expected a JSON object")
    keys = list(records[0][1]) if records else []
    return keys, records
