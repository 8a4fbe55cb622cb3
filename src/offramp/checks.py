"""Data–model consistency: refuse to score, calibrate or time a model on data it was not trained for.

A 2-label model run on a 3-label file would silently misalign class ids, and an MRPC model run on SST-2
gives numbers that mean nothing; both are refused here, naming both sides.
"""

from __future__ import annotations

from typing import Any


def check_data_matches(model: Any, data: Any, need_labels: bool = True) -> None:
    """Raise ``ValueError`` unless ``data`` fits ``model``: labels present (if needed), kind, label set, task.

    ``model``: anything with ``config`` (``task``, ``num_labels``, ``label_names``) and ``is_regression``;
    ``data``: a :class:`~offramp.data.TextDataset`.
    """
    source = data.source or data.task or "the data"
    if need_labels and data.labels is None:
        raise ValueError(f"{source!r} has no labels to score against; expected a labelled split")
    cfg = model.config
    if data.labels is not None and model.is_regression != data.is_regression:
        kind = "regression" if model.is_regression else "classification"
        raise ValueError(f"the model does {kind} but the labels of {source!r} do not")
    names = cfg.label_names
    same_names = names is None or data.label_names is None or list(data.label_names) == list(names)
    classes = not model.is_regression and data.labels is not None
    if classes and (data.num_labels != cfg.num_labels or not same_names):
        raise ValueError(
            f"the data from {source!r} has {data.num_labels} labels {list(data.label_names or [])} but the "
            f"model was trained for {cfg.num_labels} {list(names or [])}"
        )
    model_task, data_task = getattr(cfg, "task", None), getattr(data, "task", None)
    if model_task and data_task and model_task != data_task:
        raise ValueError(
            f"the model was trained on task {model_task!r} but the data is task {data_task!r} "
            f"({source}); pass --task {model_task} or another model"
        )
