"""Atomic writes: a folder or a JSON file appears whole or not at all, and an older one survives a failure.

Created files and folders follow the process umask (``tempfile.mkdtemp`` would make them 0700).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_sibling(target: Path, kind: str = "tmp") -> Path:
    """A hidden, unique path next to ``target`` (same filesystem, so a rename is atomic)."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_dir(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a folder atomically: yield a temporary sibling, rename it into place on success.

    On any failure the temporary folder is removed and an existing ``directory`` is left untouched.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    tmp.mkdir(mode=0o777 & ~_umask())
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(source: Path, target: Path) -> None:
    """Move a finished folder into place, replacing an older one only after the new one is complete."""
    if target.exists():
        backup = temp_sibling(target, "old")
        os.replace(target, backup)
        os.replace(source, target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(source, target)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` through a temporary sibling so a failure never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically (see :func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def replace_file_atomic(path: str | os.PathLike[str], write: Any) -> Path:
    """Call ``write(tmp_path)`` on a temporary sibling, then rename it over ``path`` (binary outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
