"""Loading a :class:`TextDataset` from GLUE task files, local tables or Hugging Face ``datasets``.

* :func:`load_glue` reads the standard GLUE directory layout (``<data_dir>/<TASK>/<split>.tsv``) for
  all nine tasks, warts included (CoLA has no header, MRPC's dev file starts with a byte-order mark,
  MNLI has matched and mismatched dev sets);
* :func:`load_table` reads a local ``.csv``, ``.tsv``, ``.jsonl`` or ``.json`` (JSON lines or one array);
* :func:`load_hf` goes through the optional ``datasets`` library;
* :func:`load_data` is the single front door that picks one of these from its arguments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .dataset import TextDataset
from .errors import DataError
from .fields import check_columns, clean_text, encode_labels, text_columns_of
from .readers import read_delimited, read_json_records
from .tasks import SPLIT_ALIASES, default_glue_dir, get_task_spec, resolve_split

__all__ = ["load_glue", "load_table", "load_hf", "load_data"]

_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")


# ---------------------------------------------------------------------------------------------------------
# GLUE
# ---------------------------------------------------------------------------------------------------------


def load_glue(task: str, data_dir: str | os.PathLike | None = None, split: str = "train") -> TextDataset:
    """Load one split of a GLUE task from the standard directory layout.

    ``data_dir`` holds the task folders (``SST-2``, ``MRPC``, ...); ``None`` means
    :func:`default_glue_dir`. ``split`` is ``train``, ``dev`` (``validation`` also accepted; for MNLI
    it means ``dev_matched``, for ``mnli-mm`` ``dev_mismatched``) or ``test``. Test files carry no
    labels and load with ``labels=None``.
    """
    spec = get_task_spec(task)
    split_key = resolve_split(spec, split)
    root = Path(data_dir) if data_dir is not None else default_glue_dir()
    if not root.is_dir():
        raise DataError(
            f"GLUE data directory {str(root)!r} not found; expected a folder holding {spec.folder}/"
        )
    path = root / spec.folder / spec.files[split_key]
    if not path.is_file():
        raise DataError(f"GLUE file {str(path)!r} not found for task {spec.name!r} split {split_key!r}")

    is_test = split_key.startswith("test")
    header = spec.header or is_test  # GLUE test files always have an ``index, ...`` header
    names, rows = read_delimited(path, tsv=True, header=header, columns=spec.columns)
    source = str(path)
    check_columns(spec.text_columns, names, source)
    has_label = spec.label_column in names
    if not has_label and not is_test:
        check_columns([spec.label_column], names, source)
    text_idx = [names.index(c) for c in spec.text_columns]
    label_idx = names.index(spec.label_column) if has_label else None

    texts: list[tuple[str, ...]] = []
    raw: list[str] = []
    wheres: list[str] = []
    for row, (line, fields) in enumerate(rows):
        where = f"row {row} (line {line} of {source})"
        if len(fields) != len(names):
            raise DataError(f"{where} has {len(fields)} tab-separated fields; expected {len(names)}")
        texts.append(
            tuple(clean_text(fields[i], c, where) for i, c in zip(text_idx, spec.text_columns, strict=True))
        )
        if label_idx is not None:
            raw.append(fields[label_idx])
            wheres.append(where)

    labels: list[int] | list[float] | None = None
    if label_idx is not None:
        labels, _ = encode_labels(raw, wheres, spec.label_names, spec.is_regression, source)
    return TextDataset(
        texts=texts,
        labels=labels,
        label_names=None if spec.label_names is None else list(spec.label_names),
        task=spec.name,
        source=source,
    )


# ---------------------------------------------------------------------------------------------------------
# Local tables
# ---------------------------------------------------------------------------------------------------------


def _table_records(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Column names and ``(line, record)`` pairs of a ``.csv``/``.tsv``/JSON file."""
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in _TABLE_SUFFIXES:
        raise DataError(
            f"unsupported file type {suffix!r} for {source!r}; expected .csv, .tsv, .jsonl or .json"
        )
    if suffix not in (".csv", ".tsv"):
        return read_json_records(path)
    tsv = suffix == ".tsv"
    names, lines = read_delimited(path, tsv=tsv)
    rows: list[tuple[int, dict]] = []
    for line, fields in lines:
        if len(fields) != len(names):
            hint = " (.tsv is read with quoting off, so a field cannot span lines: use .csv or .jsonl)"
            message = f"line {line} of {source!r} has {len(fields)} fields; expected {len(names)}"
            raise DataError(message + (hint if tsv else ""))
        rows.append((line, dict(zip(names, fields, strict=True))))
    return names, rows


def load_table(
    path: str | os.PathLike,
    text_columns: str | Sequence[str],
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    regression: bool = False,
    task: str | None = None,
) -> TextDataset:
    """Load a local ``.csv``, ``.tsv``, ``.jsonl`` or ``.json`` (JSON lines or an array of objects) file.

    ``text_columns`` names one or two text columns. ``label_column=None`` loads unlabelled rows.
    For classification the class ids follow ``label_names`` when given (values are matched as
    strings), else the sorted distinct values (numerically when they are all integers, else
    alphabetically ignoring case). ``regression=True`` reads float targets. CSV is read with
    standard quoting (a quoted field may span lines); TSV with quoting disabled, as GLUE files
    need. ``task`` only tags the result for metric selection.
    """
    path = Path(path)
    cols = text_columns_of(text_columns)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found")
    source = str(path)
    names, records = _table_records(path)
    wanted = cols + ((label_column,) if label_column else ())
    check_columns(wanted, names, source)
    texts: list[tuple[str, ...]] = []
    raw: list[Any] = []
    wheres: list[str] = []
    for row, (line, rec) in enumerate(records):
        where = f"row {row} (line {line} of {source})"
        for col in wanted:
            if col not in rec:
                raise DataError(f"column {col!r} missing at {where}; columns found: {list(rec)}")
        texts.append(tuple(clean_text(rec[c], c, where) for c in cols))
        if label_column:
            raw.append(rec[label_column])
            wheres.append(where)

    spec = get_task_spec(task) if task is not None else None
    labels: list[int] | list[float] | None = None
    names_out: list[str] | None = None
    if label_column:
        labels, names_out = encode_labels(raw, wheres, label_names, regression, source)
    elif not regression:
        names_out = [str(n) for n in label_names] if label_names is not None else None
    return TextDataset(
        texts=texts,
        labels=labels,
        label_names=names_out,
        task=spec.name if spec else None,
        source=source,
    )


# ---------------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------------------


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loading Hugging Face datasets needs the optional 'datasets' package: pip install 'offramp[hf]'"
        ) from exc
    return datasets


def _open_hf(datasets: Any, name: str, split: str, config_name: str | None) -> Any:
    """The ``Dataset`` for ``split`` of a hub name, a ``save_to_disk`` folder or a local data file."""
    local = Path(name).expanduser()
    if local.exists():
        try:
            obj = datasets.load_from_disk(str(local))
        except (FileNotFoundError, ValueError, OSError):
            obj = None
        if obj is None:
            try:
                if local.is_file():  # a single data file: let the matching builder read it
                    suffix = local.suffix.lower()
                    builder = "csv" if suffix in (".csv", ".tsv") else "json"
                    extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
                    obj = datasets.load_dataset(builder, data_files=str(local), split="train", **extra)
                else:
                    obj = datasets.load_dataset(str(local), config_name, split=split)
            except Exception as exc:  # datasets raises many types; report them alike
                raise DataError(f"cannot read a dataset from {name!r}: {exc}".splitlines()[0]) from exc
    elif name.startswith(("/", "./", "../", "~")) or local.suffix.lower() in _TABLE_SUFFIXES:
        raise DataError(f"dataset path {name!r} not found")
    else:
        try:
            obj = datasets.load_dataset(name, config_name, split=split)
        except Exception as exc:
            raise DataError(f"cannot load dataset {name!r} split {split!r}: {exc}".splitlines()[0]) from exc

    if not isinstance(obj, datasets.DatasetDict):
        return obj
    candidates = [split]
    if SPLIT_ALIASES.get(split.lower(), split.lower()) == "dev":
        candidates += ["validation", "dev"]
    wanted = next((c for c in candidates if c in obj), None)
    if wanted is None:
        raise DataError(f"split {split!r} not found in {name!r}; expected one of: {', '.join(obj)}")
    return obj[wanted]


def _hf_labels(
    datasets: Any,
    ds: Any,
    label_column: str,
    label_names: Sequence[str] | None,
    regression: bool | None,
    source: str,
) -> tuple[list[int] | list[float] | None, list[str] | None]:
    """Labels and label names of ``ds[label_column]`` (a ``ClassLabel`` keeps its own names)."""
    feature = ds.features[label_column]
    raw = list(ds[label_column])
    if not isinstance(feature, datasets.ClassLabel) or regression:
        if regression is None:
            dtype = getattr(feature, "dtype", "")
            regression = isinstance(dtype, str) and dtype.startswith("float")
        return encode_labels(raw, None, label_names, regression, source)
    names = list(label_names) if label_names is not None else list(feature.names)
    if raw and all(v == -1 for v in raw):
        return None, names
    for i, v in enumerate(raw):
        if not 0 <= v < len(names):
            raise DataError(
                f"label {v!r} at row {i} of {source} is not one of the allowed labels "
                f"0..{len(names) - 1} ({names})"
            )
    return [int(v) for v in raw], names


def load_hf(
    name: str,
    split: str = "train",
    text_columns: str | Sequence[str] | None = None,
    label_column: str | None = "label",
    config_name: str | None = None,
    label_names: Sequence[str] | None = None,
    regression: bool | None = None,
    task: str | None = None,
) -> TextDataset:
    """Load a split through the ``datasets`` library.

    ``name`` is a hub dataset name or a local path: a directory written by ``save_to_disk`` (a
    ``Dataset`` or a ``DatasetDict``, from which ``split`` is taken) or anything ``load_dataset``
    reads. Label names come from a ``ClassLabel`` feature when present (label ``-1`` everywhere means
    unlabelled), else from ``label_names`` or the sorted distinct values. ``regression=None`` means
    regression exactly when the label column holds floats. ``label_column=None`` loads no labels.
    """
    datasets = _import_datasets()
    cols = text_columns_of(text_columns)
    ds = _open_hf(datasets, name, split, config_name)
    source = f"{name}[{split}]"
    check_columns(cols + ((label_column,) if label_column else ()), list(ds.column_names), source)

    columns = [ds[c] for c in cols]
    texts = [
        tuple(
            clean_text(col[i], name, f"row {i} of {source}") for col, name in zip(columns, cols, strict=True)
        )
        for i in range(len(ds))
    ]
    spec = get_task_spec(task) if task is not None else None
    labels: list[int] | list[float] | None = None
    names_out: list[str] | None = None
    if label_column:
        labels, names_out = _hf_labels(datasets, ds, label_column, label_names, regression, source)
    elif not regression and label_names is not None:
        names_out = [str(n) for n in label_names]
    task_name = spec.name if spec else None
    return TextDataset(texts=texts, labels=labels, label_names=names_out, task=task_name, source=source)


# ---------------------------------------------------------------------------------------------------------
# Front door
# ---------------------------------------------------------------------------------------------------------


def load_data(
    task: str | None = None,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    hf_name: str | None = None,
    hf_config: str | None = None,
    text_columns: str | Sequence[str] | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    regression: bool | None = None,
) -> TextDataset:
    """Load a dataset from whichever source the arguments name (the CLI's single entry point).

    * ``task`` alone (optionally ``data_dir``): a GLUE task from the standard layout, see :func:`load_glue`.
    * ``path``: a local file (``.csv``/``.tsv``/``.jsonl``/``.json``, see :func:`load_table`) or a
      directory (read through :func:`load_hf`, e.g. one written by ``save_to_disk``).
    * ``hf_name`` (with ``hf_config``): a dataset through the ``datasets`` library.

    With ``path`` or ``hf_name``, a ``task`` supplies defaults (text columns, label column, label
    names, regression) and tags the result; otherwise ``text_columns`` is required and
    ``label_column`` defaults to ``"label"``. ``regression=None`` means: from the task if given, else
    classification for files and auto-detected (float label column) for ``datasets`` sources.
    Raises :class:`DataError` on any bad input.
    """
    if path is not None and hf_name is not None:
        raise DataError(f"both path {str(path)!r} and hf_name {hf_name!r} given; expected at most one source")
    spec = get_task_spec(task) if task is not None else None
    if path is None and hf_name is None:
        if spec is None:
            raise DataError("no data source given; expected a task, a path or an hf_name")
        return load_glue(spec.name, data_dir, split)

    if text_columns is None and spec is not None:
        text_columns = spec.text_columns
    if label_column is None:
        label_column = spec.label_column if spec is not None else "label"
    if label_names is None and spec is not None and spec.label_names is not None:
        label_names = spec.label_names
    if regression is None and spec is not None:
        regression = spec.is_regression
    task_name = spec.name if spec else None

    if path is not None and not Path(path).is_dir():
        return load_table(
            path, text_columns_of(text_columns), label_column, label_names, bool(regression), task=task_name
        )
    return load_hf(
        str(path) if path is not None else str(hf_name),
        split=split,
        text_columns=text_columns,
        label_column=label_column,
        config_name=hf_config,
        label_names=label_names,
        regression=regression,
        task=task_name,
    )
