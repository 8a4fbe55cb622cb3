"""The nine GLUE tasks: how each is laid out on disk and how it is scored."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import DataError

__all__ = ["TaskSpec", "GLUE_TASKS", "TASK_ALIASES", "get_task_spec", "task_names", "default_glue_dir"]


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


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_PAIR = ("sentence1", "sentence2")


def _glue(
    name: str,
    folder: str,
    text_columns: tuple[str, ...],
    label_column: str = "label",
    label_names: tuple[str, ...] | None = _BINARY,
    metrics: tuple[str, ...] = ("accuracy",),
    header: bool = True,
    columns: tuple[str, ...] | None = None,
) -> TaskSpec:
    """A task with the usual ``train.tsv``/``dev.tsv``/``test.tsv`` files; defaults: the common case."""
    files = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
    return TaskSpec(name, folder, files, text_columns, label_column, label_names, metrics, header, columns)


_MNLI = replace(
    _glue("mnli", "MNLI", _PAIR, "gold_label", ("entailment", "neutral", "contradiction")),
    files={
        "train": "train.tsv",
        "dev": "dev_matched.tsv",
        "test": "test_matched.tsv",
        "dev_matched": "dev_matched.tsv",
        "dev_mismatched": "dev_mismatched.tsv",
        "test_matched": "test_matched.tsv",
        "test_mismatched": "test_mismatched.tsv",
    },
)

GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue(
            "cola",
            "CoLA",
            ("sentence",),
            metrics=("matthews_corrcoef",),
            header=False,
            columns=("source", "label", "original_label", "sentence"),
        ),
        _glue("sst2", "SST-2", ("sentence",)),
        _glue("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", metrics=("f1", "accuracy")),
        _glue("stsb", "STS-B", _PAIR, "score", None, ("pearson", "spearmanr")),
        _glue("qqp", "QQP", ("question1", "question2"), "is_duplicate", metrics=("f1", "accuracy")),
        _MNLI,
        # Same files as mnli; only the default dev and test splits are the mismatched ones.
        replace(
            _MNLI,
            name="mnli-mm",
            files={**_MNLI.files, "dev": "dev_mismatched.tsv", "test": "test_mismatched.tsv"},
        ),
        _glue("qnli", "QNLI", ("question", "sentence"), label_names=_NLI2),
        _glue("rte", "RTE", _PAIR, label_names=_NLI2),
        _glue("wnli", "WNLI", _PAIR),
    )
}

#: What the 0/1 labels of the binary tasks mean (GLUE's own descriptions), for people reading predictions.
DISPLAY_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "wnli": ("not_entailment", "entailment"),
}


def display_names(task: str | None, label_names: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Readable class names: the task's meanings where its raw labels are 0/1 codes, else the raw names."""
    spec = GLUE_TASKS.get(_LOOKUP.get(_squash(task), "")) if task else None
    if spec is not None and spec.name in DISPLAY_NAMES and list(label_names or []) == list(spec.label_names):
        return list(DISPLAY_NAMES[spec.name])
    return None if label_names is None else list(label_names)


#: Extra spellings, compared after lower-casing and dropping ``-``, ``_`` and spaces.
TASK_ALIASES: dict[str, str] = {
    "mnlim": "mnli",
    "mnlimatched": "mnli",
    "mnlimm": "mnli-mm",
    "mnlimismatched": "mnli-mm",
    "sts": "stsb",
    "sst": "sst2",
}

#: Other names of the dev split, accepted by every loader.
SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "eval": "dev"}


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


def resolve_split(spec: TaskSpec, split: str) -> str:
    """The key of ``split`` in ``spec.files`` (``validation`` and the other aliases mean ``dev``)."""
    key = SPLIT_ALIASES.get(split.lower(), split.lower()) if isinstance(split, str) else split
    if key not in spec.files:
        known = ", ".join(spec.files)
        raise DataError(f"unknown split {split!r} for task {spec.name!r}; expected one of: {known}")
    return key


def default_glue_dir() -> Path:
    """Default GLUE folder: ``$OFFRAMP_GLUE_DIR``, else ``../shared/data/glue`` from the project root."""
    env = os.environ.get("OFFRAMP_GLUE_DIR")
    if env:
        return Path(env)
    project_root = Path(__file__).resolve().parents[3]  # src/offramp/data/tasks.py -> project root
    return project_root.parent / "shared" / "data" / "glue"
