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
        follow_umask(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes the umask allows (writers such as safetensors
    create 0600 files, which a service account or a colleague then cannot read)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


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
    return replace_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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


class FolderBusyError(OSError):
    """Another process holds the lock of an output folder."""


@contextmanager
def folder_lock(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (a hidden ``.NAME.lock`` file beside it) while writing it.

    A second writer fails at once with :class:`FolderBusyError` naming the holder's pid, instead of both
    running for an hour and the last one silently winning. The lock is an OS-level ``flock``, released
    however the holder exits, so a killed run never leaves a stale lock; the file is removed on release.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.with_name(f".{target.name}.lock")
    fh = _acquire(path, target)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        fh.close()


def _acquire(path: Path, target: Path) -> Any:
    """Open and flock ``path``; retry when the file was replaced meanwhile (a holder removed it)."""
    import fcntl

    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise FolderBusyError(
                f"{str(target)!r} is being written by another offramp process (pid {holder}); wait for it "
                "to finish or choose another output folder"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            return fh
        fh.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Hidden temporaries of ``target`` (``.NAME.tmp-PID-*``, ``.NAME.old-PID-*``) whose process died."""
    target = Path(target)
    found = []
    if not target.parent.is_dir():
        return found
    for kind in ("tmp", "old"):
        for path in target.parent.glob(f".{target.name}.{kind}-*"):
            pid = path.name.rsplit(f".{kind}-", 1)[1].split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                found.append(path)
    return sorted(found)


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes in the files under ``path`` (a file's own size for a file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_size(size: float) -> str:
    """``93323264`` -> ``'89 MB'``."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit != "GB" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
