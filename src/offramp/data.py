"""Text-classification data: GLUE task files, local tables, Hugging Face datasets, and batching.

Everything loads into one small in-memory type, :class:`TextDataset` (one or two strings per row,
integer class ids or float regression targets, the ordered label names), so training, calibration
and evaluation code never needs to know where the rows came from.

Sources:

* :func:`load_glue` reads the standard GLUE directory layout (``<data_dir>/<TASK>/<split>.tsv``) for
  all nine tasks, warts included (CoLA has no header, MRPC's dev file starts with a byte-order mark,
  MNLI has matched and mismatched dev sets);
* :func:`load_table` reads a local ``.csv``, ``.tsv``, ``.jsonl`` or ``.json`` (JSON lines or one array);
* :func:`load_hf` goes through the optional ``datasets`` library (a hub name, or a local directory
  written by ``save_to_disk`` or readable by ``load_dataset``);
* :func:`load_data` is the single front door that picks one of these from its arguments.

:func:`subsample` and :func:`train_val_split` draw deterministic subsets; :func:`make_loader`
tokenises once and yields dynamically padded batches of tensors.

Every problem with the input raises :class:`DataError` (a ``ValueError``) with a one-line message
that names the bad value and what was expected.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "DataError",
    "TruncationWarning",
    "TaskSpec",
    "TextDataset",
    "GLUE_TASKS",
    "TASK_ALIASES",
    "default_glue_dir",
    "get_task_spec",
    "task_names",
    "load_glue",
    "load_table",
    "load_hf",
    "load_data",
    "subsample",
    "train_val_split",
    "tokenize",
    "make_loader",
]


class DataError(ValueError):
    """The input data (task, path, columns, labels or texts) is not what was expected."""


class TruncationWarning(UserWarning):
    """Some rows were longer than ``max_length`` tokens and were cut."""


# ---------------------------------------------------------------------------------------------------------
# Task specifications
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is laid out on disk and how it is scored.

    ``files`` maps split names to file names inside ``<data_dir>/<folder>``. ``label_names`` holds the
    raw label strings of the files in a fixed order (a label's class id is its position); ``None``
    marks a regression task. ``header`` says whether the labelled files (train/dev) start with a
    header row; when it is ``False`` the columns are named by ``columns``. Test files of GLUE always
    have a header and no label column. ``metrics[0]`` is the primary metric used for model selection.
    """

    name: str
    folder: str
    files: dict[str, str]
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    header: bool = True
    columns: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        """True for a regression task (STS-B)."""
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Number of classes, 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def primary_metric(self) -> str:
        """The metric key used for model selection."""
        return self.metrics[0]

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names this task accepts."""
        return tuple(self.files)


_STD_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_NLI2 = ("entailment", "not_entailment")
_BINARY = ("0", "1")

GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec(
        name="cola",
        folder="CoLA",
        files=dict(_STD_FILES),
        text_columns=("sentence",),
        label_column="label",
        label_names=_BINARY,
        metrics=("matthews_corrcoef",),
        header=False,
        columns=("source", "label", "original_label", "sentence"),
    ),
    "sst2": TaskSpec(
        name="sst2",
        folder="SST-2",
        files=dict(_STD_FILES),
        text_columns=("sentence",),
        label_column="label",
        label_names=_BINARY,
        metrics=("accuracy",),
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        folder="MRPC",
        files=dict(_STD_FILES),
        text_columns=("#1 String", "#2 String"),
        label_column="Quality",
        label_names=_BINARY,
        metrics=("f1", "accuracy"),
    ),
    "stsb": TaskSpec(
        name="stsb",
        folder="STS-B",
        files=dict(_STD_FILES),
        text_columns=("sentence1", "sentence2"),
        label_column="score",
        label_names=None,
        metrics=("pearson", "spearmanr"),
    ),
    "qqp": TaskSpec(
        name="qqp",
        folder="QQP",
        files=dict(_STD_FILES),
        text_columns=("question1", "question2"),
        label_column="is_duplicate",
        label_names=_BINARY,
        metrics=("f1", "accuracy"),
    ),
    "mnli": TaskSpec(
        name="mnli",
        folder="MNLI",
        files={
            "train": "train.tsv",
            "dev": "dev_matched.tsv",
            "test": "test_matched.tsv",
            "dev_matched": "dev_matched.tsv",
            "dev_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
        text_columns=("sentence1", "sentence2"),
        label_column="gold_label",
        label_names=("entailment", "neutral", "contradiction"),
        metrics=("accuracy",),
    ),
    "mnli-mm": TaskSpec(
        name="mnli-mm",
        folder="MNLI",
        files={
            "train": "train.tsv",
            "dev": "dev_mismatched.tsv",
            "test": "test_mismatched.tsv",
            "dev_matched": "dev_matched.tsv",
            "dev_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
        text_columns=("sentence1", "sentence2"),
        label_column="gold_label",
        label_names=("entailment", "neutral", "contradiction"),
        metrics=("accuracy",),
    ),
    "qnli": TaskSpec(
        name="qnli",
        folder="QNLI",
        files=dict(_STD_FILES),
        text_columns=("question", "sentence"),
        label_column="label",
        label_names=_NLI2,
        metrics=("accuracy",),
    ),
    "rte": TaskSpec(
        name="rte",
        folder="RTE",
        files=dict(_STD_FILES),
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        label_names=_NLI2,
        metrics=("accuracy",),
    ),
    "wnli": TaskSpec(
        name="wnli",
        folder="WNLI",
        files=dict(_STD_FILES),
        text_columns=("sentence1", "sentence2"),
        label_column="label",
        label_names=_BINARY,
        metrics=("accuracy",),
    ),
}

#: Extra spellings, compared after lower-casing and dropping ``-``, ``_`` and spaces.
TASK_ALIASES: dict[str, str] = {
    "mnlim": "mnli",
    "mnlimatched": "mnli",
    "mnlimm": "mnli-mm",
    "mnlimismatched": "mnli-mm",
    "sts": "stsb",
    "sst": "sst2",
}

_SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "eval": "dev"}
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


_LOOKUP: dict[str, str] = {_squash(k): k for k in GLUE_TASKS}
_LOOKUP.update(TASK_ALIASES)


def task_names() -> list[str]:
    """Canonical names of the known GLUE tasks."""
    return list(GLUE_TASKS)


def get_task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of a GLUE task, accepting aliases case-insensitively (``SST-2``, ``mnli-mm``)."""
    if not isinstance(task, str) or _squash(task) not in _LOOKUP:
        raise DataError(f"unknown task {task!r}; expected one of: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[_LOOKUP[_squash(task)]]


def default_glue_dir() -> Path:
    """Default GLUE folder: ``$OFFRAMP_GLUE_DIR``, else ``../shared/data/glue`` from the project root."""
    env = os.environ.get("OFFRAMP_GLUE_DIR")
    if env:
        return Path(env)
    project_root = Path(__file__).resolve().parents[2]
    return project_root.parent / "shared" / "data" / "glue"


# ---------------------------------------------------------------------------------------------------------
# The dataset type
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Shared validation helpers
# ---------------------------------------------------------------------------------------------------------


def _text_columns(text_columns: str | Sequence[str] | None) -> tuple[str, ...]:
    if text_columns is None:
        raise DataError("no text columns given; expected one or two column names")
    cols = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if len(cols) not in (1, 2):
        raise DataError(f"text columns {list(cols)!r}: expected one or two column names")
    return cols


def _check_columns(wanted: Iterable[str], found: Sequence[str], source: str) -> None:
    for col in wanted:
        if col not in found:
            raise DataError(f"column {col!r} not found in {source}; columns found: {list(found)}")


def _clean_text(value: Any, column: str, where: str) -> str:
    text = "" if value is None else str(value)
    text = text.strip()
    if not text:
        raise DataError(f"empty text in column {column!r} at {where}; expected a non-blank string")
    return text


def _label_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _infer_label_names(keys: Iterable[str]) -> list[str]:
    unique = set(keys)
    try:
        return sorted(unique, key=lambda k: (int(k), k))
    except ValueError:
        return sorted(unique)


def _encode_labels(
    raw: Sequence[Any],
    wheres: Sequence[str] | None,
    label_names: Sequence[str] | None,
    regression: bool,
    source: str,
) -> tuple[list[int] | list[float], list[str] | None]:
    """Turn raw label values into class ids (or floats) and the ordered label names."""

    def where(i: int) -> str:
        return wheres[i] if wheres is not None else f"row {i} of {source}"

    if regression:
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
        return out, None

    keys = [_label_key(v) for v in raw]
    names = [str(n) for n in label_names] if label_names is not None else _infer_label_names(keys)
    if len(set(names)) != len(names):
        raise DataError(f"label names {names} contain duplicates; expected distinct names")
    ids = {name: i for i, name in enumerate(names)}
    labels: list[int] = []
    for i, key in enumerate(keys):
        if key not in ids:
            raise DataError(f"label {raw[i]!r} at {where(i)} is not one of the allowed labels {names}")
        labels.append(ids[key])
    return labels, names


# ---------------------------------------------------------------------------------------------------------
# GLUE
# ---------------------------------------------------------------------------------------------------------


def _resolve_split(spec: TaskSpec, split: str) -> str:
    key = _SPLIT_ALIASES.get(split.lower(), split.lower()) if isinstance(split, str) else split
    if key not in spec.files:
        known = ", ".join(spec.files)
        raise DataError(f"unknown split {split!r} for task {spec.name!r}; expected one of: {known}")
    return key


def _read_delimited(
    path: Path, *, tsv: bool, header: bool = True, columns: Sequence[str] | None = None
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a CSV (standard quoting) or TSV (quoting disabled, as GLUE needs) file.

    Returns the column names (from the header row, else ``columns``) and ``(line_number, fields)``
    for each non-blank row. The encoding is ``utf-8-sig`` so a byte-order mark never reaches a name.
    """
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if tsv:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(fh)
        if header:
            try:
                names = next(reader)
            except StopIteration:
                raise DataError(f"file {str(path)!r} is empty; expected a header row") from None
        else:
            names = list(columns or ())
        rows = [(reader.line_num, fields) for fields in reader if fields and fields != [""]]
    if not rows:
        raise DataError(f"file {str(path)!r} has no data rows; expected at least one row after the header")
    return names, rows


def load_glue(task: str, data_dir: str | os.PathLike | None = None, split: str = "train") -> TextDataset:
    """Load one split of a GLUE task from the standard directory layout.

    ``data_dir`` holds the task folders (``SST-2``, ``MRPC``, ...); ``None`` means
    :func:`default_glue_dir`. ``split`` is ``train``, ``dev`` (``validation`` also accepted; for MNLI
    it means ``dev_matched``, for ``mnli-mm`` ``dev_mismatched``) or ``test``. Test files carry no
    labels and load with ``labels=None``.
    """
    spec = get_task_spec(task)
    split_key = _resolve_split(spec, split)
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
    names, rows = _read_delimited(path, tsv=True, header=header, columns=spec.columns)
    source = str(path)
    _check_columns(spec.text_columns, names, source)
    has_label = spec.label_column in names
    if not has_label and not is_test:
        _check_columns([spec.label_column], names, source)
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
            tuple(_clean_text(fields[i], c, where) for i, c in zip(text_idx, spec.text_columns, strict=True))
        )
        if label_idx is not None:
            raw.append(fields[label_idx])
            wheres.append(where)

    labels: list[int] | list[float] | None = None
    if label_idx is not None:
        labels, _ = _encode_labels(raw, wheres, spec.label_names, spec.is_regression, source)
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


def _iter_json_records(path: Path) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Records of a JSON-lines file (or a single JSON array); return the first record's keys too."""
    with open(path, encoding="utf-8-sig") as fh:
        content = fh.read()
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
    return keys, iter(records)


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
    strings), else the sorted distinct values (numerically when they are all integers).
    ``regression=True`` reads float targets. CSV is read with standard quoting; TSV with quoting
    disabled, as GLUE files need. ``task`` only tags the result for metric selection.
    """
    path = Path(path)
    cols = _text_columns(text_columns)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found")
    source = str(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        names, lines = _read_delimited(path, tsv=suffix == ".tsv")
        rows: list[tuple[int, dict]] = []
        for line, fields in lines:
            if len(fields) != len(names):
                raise DataError(f"line {line} of {source!r} has {len(fields)} fields; expected {len(names)}")
            rows.append((line, dict(zip(names, fields, strict=True))))
        records: Iterator[tuple[int, dict]] = iter(rows)
    elif suffix in _TABLE_SUFFIXES:
        names, records = _iter_json_records(path)
    else:
        raise DataError(
            f"unsupported file type {suffix!r} for {source!r}; expected .csv, .tsv, .jsonl or .json"
        )

    _check_columns(cols + ((label_column,) if label_column else ()), names, source)
    texts: list[tuple[str, ...]] = []
    raw: list[Any] = []
    wheres: list[str] = []
    for row, (line, rec) in enumerate(records):
        where = f"row {row} (line {line} of {source})"
        for col in cols + ((label_column,) if label_column else ()):
            if col not in rec:
                raise DataError(f"column {col!r} missing at {where}; columns found: {list(rec)}")
        texts.append(tuple(_clean_text(rec[c], c, where) for c in cols))
        if label_column:
            raw.append(rec[label_column])
            wheres.append(where)

    spec = get_task_spec(task) if task is not None else None
    labels: list[int] | list[float] | None = None
    names_out: list[str] | None = None
    if label_column:
        labels, names_out = _encode_labels(raw, wheres, label_names, regression, source)
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
    cols = _text_columns(text_columns)
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

    if isinstance(obj, datasets.DatasetDict):
        candidates = [split]
        if _SPLIT_ALIASES.get(split.lower(), split.lower()) == "dev":
            candidates += ["validation", "dev"]
        wanted = next((c for c in candidates if c in obj), None)
        if wanted is None:
            raise DataError(f"split {split!r} not found in {name!r}; expected one of: {', '.join(obj)}")
        ds = obj[wanted]
    else:
        ds = obj
    source = f"{name}[{split}]"
    found = list(ds.column_names)
    _check_columns(cols + ((label_column,) if label_column else ()), found, source)

    columns = [ds[c] for c in cols]
    texts = [
        tuple(
            _clean_text(values[i], c, f"row {i} of {source}") for values, c in zip(columns, cols, strict=True)
        )
        for i in range(len(ds))
    ]

    spec = get_task_spec(task) if task is not None else None
    labels: list[int] | list[float] | None = None
    names_out: list[str] | None = None
    if label_column:
        feature = ds.features[label_column]
        raw = list(ds[label_column])
        if isinstance(feature, datasets.ClassLabel) and not regression:
            names_out = list(label_names) if label_names is not None else list(feature.names)
            if raw and all(v == -1 for v in raw):
                labels = None
            else:
                for i, v in enumerate(raw):
                    if not 0 <= v < len(names_out):
                        raise DataError(
                            f"label {v!r} at row {i} of {source} is not one of the allowed labels "
                            f"0..{len(names_out) - 1} ({names_out})"
                        )
                labels = [int(v) for v in raw]
        else:
            if regression is None:
                dtype = getattr(feature, "dtype", "")
                regression = isinstance(dtype, str) and dtype.startswith("float")
            labels, names_out = _encode_labels(raw, None, label_names, regression, source)
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
            path, _text_columns(text_columns), label_column, label_names, bool(regression), task=task_name
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


# ---------------------------------------------------------------------------------------------------------
# Deterministic subsets
# ---------------------------------------------------------------------------------------------------------


def subsample(ds: TextDataset, n: int | None, seed: int = 0) -> TextDataset:
    """``n`` rows drawn without replacement, deterministically from ``seed``.

    The rows are the first ``n`` of ``numpy.random.default_rng(seed).permutation(len(ds))``, returned
    in their original order, so a larger ``n`` with the same seed gives a superset. ``n=None`` or
    ``n >= len(ds)`` returns all rows in the original order (``ds`` itself).
    """
    if n is None or n >= len(ds):
        return ds
    if n < 0:
        raise DataError(f"subsample size {n} is negative; expected a count >= 0")
    perm = np.random.default_rng(seed).permutation(len(ds))
    return ds.select(sorted(perm[:n].tolist()))


def train_val_split(ds: TextDataset, val_size: int | float, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """Carve a validation split out of a training set for model selection and calibration.

    ``val_size`` is a row count (int >= 1) or a fraction (float in (0, 1), rounded, at least one row).
    Rows are assigned by ``numpy.random.default_rng(seed).permutation``; both parts keep the original
    row order, are disjoint and together cover ``ds``. GLUE dev sets stay the untouched evaluation set.
    """
    n = len(ds)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise DataError(f"val_size {val_size!r}: expected an int count or a float fraction")
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 < val_size < 1.0:
            raise DataError(f"val_size {val_size!r}: expected a fraction strictly between 0 and 1")
        k = max(1, int(round(val_size * n)))
    else:
        k = int(val_size)
    if not 1 <= k < n:
        raise DataError(
            f"val_size {val_size!r} leaves no rows for one side of {n} rows; expected 1..{n - 1} rows"
        )
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = sorted(perm[:k].tolist())
    train_idx = sorted(perm[k:].tolist())
    return ds.select(train_idx), ds.select(val_idx)


# ---------------------------------------------------------------------------------------------------------
# Tokenisation and batching
# ---------------------------------------------------------------------------------------------------------


def _resolve_max_length(tokenizer: Any, max_length: int | None) -> int:
    if max_length is None:
        max_length = getattr(tokenizer, "model_max_length", 512)
        if not isinstance(max_length, int) or max_length > 100_000:
            max_length = 512
    if max_length < 2:
        raise DataError(f"max_length {max_length!r}: expected at least 2 tokens")
    return int(max_length)


def tokenize(
    ds: TextDataset,
    tokenizer: Any,
    max_length: int | None = None,
    chunk_size: int = 4096,
    *,
    _stacklevel: int = 2,
) -> list[dict[str, list[int]]]:
    """Tokenise every row once (truncating to ``max_length``), without padding.

    Returns one dict per row (``input_ids``, ``attention_mask`` and ``token_type_ids`` when the
    tokenizer produces them). Emits a single :class:`TruncationWarning` counting the rows that were cut.
    """
    max_length = _resolve_max_length(tokenizer, max_length)
    encoded: list[dict[str, list[int]]] = []
    n_truncated = 0
    pair = ds.is_pair
    for start in range(0, len(ds), chunk_size):
        rows = ds.texts[start : start + chunk_size]
        first = [r[0] for r in rows]
        second = [r[1] for r in rows] if pair else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length)
        keys = list(enc.keys())
        for i in range(len(rows)):
            encoded.append({k: enc[k][i] for k in keys})
        # Only rows that hit max_length can have been cut: re-tokenise those without truncation.
        full = [i for i in range(len(rows)) if len(enc["input_ids"][i]) >= max_length]
        if full:
            again = tokenizer(
                [first[i] for i in full],
                [second[i] for i in full] if second is not None else None,
                truncation=False,
                verbose=False,
            )
            n_truncated += sum(len(ids) > max_length for ids in again["input_ids"])
    if n_truncated:
        where = f" of {ds.source}" if ds.source else ""
        warnings.warn(
            f"{n_truncated} of {len(ds)} rows{where} were truncated to max_length={max_length} tokens",
            TruncationWarning,
            stacklevel=_stacklevel,
        )
    return encoded


class _EncodedRows(Dataset):
    """Pre-tokenised rows, each carrying its original position as ``index``."""

    def __init__(self, features: list[dict[str, list[int]]], labels: Sequence[int | float] | None):
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = dict(self.features[i])
        item["index"] = i
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


class _PadCollator:
    """Pad a list of rows to the longest in the batch; labels and row indices become tensors."""

    def __init__(self, tokenizer: Any, regression: bool, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.regression = regression
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        index = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        labels = [r["labels"] for r in rows] if "labels" in rows[0] else None
        feats = [{k: v for k, v in r.items() if k not in ("index", "labels")} for r in rows]
        batch = dict(
            self.tokenizer.pad(
                feats, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
            )
        )
        if labels is not None:
            batch["labels"] = torch.tensor(labels, dtype=torch.float32 if self.regression else torch.long)
        batch["index"] = index
        return batch


def make_loader(
    ds: TextDataset,
    tokenizer: Any,
    batch_size: int = 32,
    max_length: int | None = 128,
    shuffle: bool = False,
    seed: int = 0,
    sort_by_length: bool = False,
    num_workers: int = 0,
    pad_to_multiple_of: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` of dynamically padded batches, tokenised once up front.

    Each batch is a dict of tensors: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
    tokenizer gives them), ``labels`` (long for classification, float for regression; absent when
    ``ds.labels`` is None) and ``index`` (each row's position in ``ds``, so the original order can
    be restored). ``shuffle`` draws a fresh order each epoch from a generator seeded with ``seed``.
    ``sort_by_length`` (inference only, not with ``shuffle``) batches rows longest first to
    minimise padding. Rows longer than ``max_length`` are truncated with one warning per call.
    """
    if batch_size < 1:
        raise DataError(f"batch_size {batch_size!r}: expected a positive integer")
    if shuffle and sort_by_length:
        raise DataError("shuffle=True with sort_by_length=True: expected at most one of them")
    features = tokenize(ds, tokenizer, max_length, _stacklevel=3)
    rows = _EncodedRows(features, ds.labels)
    collate = _PadCollator(tokenizer, ds.is_regression, pad_to_multiple_of)
    sampler: Any = None
    generator = None
    if sort_by_length:
        lengths = [len(f["input_ids"]) for f in features]
        sampler = sorted(range(len(features)), key=lambda i: -lengths[i])
    elif shuffle:
        generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        collate_fn=collate,
        num_workers=num_workers,
    )
