"""An external fine-tuned teacher for distillation (``offramp train --teacher DIR``).

The teacher is a model folder: an offramp model (its final exit teaches; a plain single-exit fine-tune
is the usual choice) or a Hugging Face sequence-classification folder
(``AutoModelForSequenceClassification``, safetensors weights only), trained on the same labels. Its
logits are computed once per training example, up front, in eval mode without gradient, and kept in
memory by row index (:class:`TeacherLogits`): cheaper than running the teacher at every step, and a
fixed target, so a resumed run sees exactly the targets an uninterrupted one saw. The loss that uses
them is :func:`offramp.losses.teacher_kd_loss`.

Unlike BEEM (``--scheme beem-kd``), whose exits learn from the model's own final exit as it trains,
this teacher is a separate, already fine-tuned model (as in DynaBERT's distillation from a fine-tuned
teacher), so every exit, the final one included, learns from it.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from .cascade import CASCADE_FILE, load_any
from .data import TextDataset, display_names, make_loader
from .evaluate import collect_exit_outputs
from .model import CONFIG_FILE, ModelLoadError, resolve_backbone
from .progress import progress_bar


class TeacherError(ValueError):
    """A teacher folder that cannot teach this task (missing, unreadable, or other labels)."""


@dataclass(frozen=True)
class TeacherInfo:
    """What identifies a teacher: recorded in the student's ``config.info`` and in the run signature."""

    path: str
    #: ``offramp`` (a model folder written by offramp) or ``hf`` (a sequence-classification folder).
    kind: str
    num_labels: int
    regression: bool
    label_names: list[str] | None
    #: sha256 over the teacher's weight files: another teacher at the same path is another run.
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        return asdict(self)


@dataclass
class TeacherLogits:
    """The teacher's outputs for every training row, in the dataset's order: ``logits`` [N, C]."""

    info: TeacherInfo
    logits: torch.Tensor

    def rows(self, index: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The teacher's logits [B, C] for the rows ``index`` of the training data."""
        return self.logits[torch.as_tensor(index, dtype=torch.long)].to(device)


def teacher_kind(path: str | Path) -> str:
    """``offramp`` or ``hf`` from the folder's files; a clear error for anything else."""
    folder = Path(path)
    if not folder.is_dir():
        raise TeacherError(
            f"teacher {str(path)!r} is not a folder; expected an offramp model folder or a Hugging Face "
            "sequence-classification folder (config.json + model.safetensors)"
        )
    if (folder / CONFIG_FILE).is_file() or (folder / CASCADE_FILE).is_file():
        return "offramp"
    if (folder / "config.json").is_file():
        return "hf"
    raise TeacherError(
        f"teacher {str(path)!r} has neither {CONFIG_FILE} (offramp model) nor config.json (Hugging Face "
        "model); expected a model folder"
    )


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for weights in sorted(folder.rglob("*.safetensors")):
        h.update(str(weights.relative_to(folder)).encode())
        with weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _hf_label_names(config: Any) -> list[str] | None:
    """``id2label`` in id order, or None for the default ``LABEL_i`` names (labels left unnamed)."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(int(config.num_labels))]
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def _load_hf(folder: Path) -> tuple[Any, Any, TeacherInfo]:
    resolve_backbone(str(folder))  # refuses pickle-only weights with a clear message
    try:
        config = AutoConfig.from_pretrained(str(folder))
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise TeacherError(
            f"cannot load teacher {str(folder)!r} as a Hugging Face sequence-classification model with "
            f"safetensors weights and a tokenizer: {exc}"
        ) from exc
    regression = config.problem_type == "regression" or int(config.num_labels) == 1
    info = TeacherInfo(
        str(folder), "hf", int(config.num_labels), regression, _hf_label_names(config), _fingerprint(folder)
    )
    return model, tokenizer, info


def _load_offramp(folder: Path) -> tuple[Any, Any, TeacherInfo]:
    try:
        model = load_any(folder)
    except ModelLoadError as exc:
        raise TeacherError(f"cannot load teacher {str(folder)!r}: {exc}") from exc
    if model.tokenizer is None:
        raise TeacherError(f"teacher {str(folder)!r} has no tokenizer files; save it with its tokenizer")
    cfg = model.config
    info = TeacherInfo(
        str(folder),
        "offramp",
        int(cfg.num_labels),
        cfg.problem_type == "regression",
        list(cfg.label_names) if cfg.label_names else None,
        _fingerprint(folder),
    )
    return model, model.tokenizer, info


def load_teacher(path: str | Path) -> tuple[Any, Any, TeacherInfo]:
    """(model, tokenizer, info) of the teacher folder ``path``, in eval mode on the CPU."""
    folder = Path(path).resolve()
    if teacher_kind(folder) == "hf":
        model, tokenizer, info = _load_hf(folder)
    else:
        model, tokenizer, info = _load_offramp(folder)
    return model.eval(), tokenizer, info


def _same_names(teacher: list[str], data: list[str], task: str | None) -> bool:
    def norm(names: list[str] | None) -> list[str] | None:
        return None if names is None else [str(n).strip().lower() for n in names]

    shown = display_names(task, data)
    return norm(teacher) in (norm(data), norm(shown))


def check_labels(info: TeacherInfo, data: TextDataset) -> None:
    """Refuse a teacher of another task: problem type, label count, and label names (when it has any)."""
    kind = "regression" if data.is_regression else "classification"
    if info.regression != data.is_regression:
        raise TeacherError(
            f"teacher {info.path!r} is a {'regression' if info.regression else 'classification'} model; "
            f"the training data is {kind}"
        )
    if info.num_labels != data.num_labels:
        raise TeacherError(
            f"teacher {info.path!r} has {info.num_labels} labels {info.label_names or ''}; the training "
            f"data has {data.num_labels}: {data.label_names}"
        )
    if data.is_regression or info.label_names is None or data.label_names is None:
        return
    if not _same_names(info.label_names, list(data.label_names), data.task):
        raise TeacherError(
            f"teacher {info.path!r} has labels {info.label_names}; the training data has "
            f"{list(data.label_names)} (same order expected)"
        )


@torch.no_grad()
def _hf_logits(
    model: Any, tokenizer: Any, data: TextDataset, batch_size: int, max_length: int, progress: bool
) -> torch.Tensor:
    device = next(model.parameters()).device
    accepted = set(inspect.signature(model.forward).parameters) & {
        "input_ids",
        "attention_mask",
        "token_type_ids",
    }
    loader = make_loader(data, tokenizer, batch_size, max_length)
    out = []
    for batch in progress_bar(loader, desc="teacher", enabled=progress):
        inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
        out.append(model(**inputs).logits.float().cpu())
    return torch.cat(out)


def teacher_logits(
    path: str | Path,
    data: TextDataset,
    *,
    batch_size: int = 128,
    max_length: int = 128,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> TeacherLogits:
    """Load the teacher at ``path``, check it fits ``data``'s labels, and run it once over ``data``.

    The teacher reads the raw texts with its own tokenizer (it may be another family than the student),
    truncated to ``max_length`` tokens; an offramp teacher answers with its final exit.
    """
    model, tokenizer, info = load_teacher(path)
    check_labels(info, data)
    model.to(device)
    if info.kind == "hf":
        logits = _hf_logits(model, tokenizer, data, batch_size, max_length, progress)
    else:
        outputs = collect_exit_outputs(model, data, batch_size, max_length, progress)
        logits = torch.from_numpy(outputs.logits[-1]).float()
    if logits.shape != (len(data), info.num_labels):
        raise TeacherError(
            f"teacher {info.path!r} gave logits of shape {tuple(logits.shape)}; expected "
            f"({len(data)}, {info.num_labels})"
        )
    return TeacherLogits(info, logits)
