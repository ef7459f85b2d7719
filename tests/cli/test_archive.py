"""Safe ZIP extraction: zip-slip, bombs, symlinks refused; regular members extracted."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from relaypacs.client import ArchiveLimits, UnsafeArchiveError, extract_zip


def _zip(path: Path, members: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


class TestExtractZip:
    def test_extracts_nested_members(self, tmp_path: Path) -> None:
        archive = _zip(tmp_path / "a.zip", {"DICOM/IM1": b"one", "DICOM/SUB/IM2": b"two"})
        members = extract_zip(archive, tmp_path / "out")
        assert sorted(m.name for m in members) == ["DICOM/IM1", "DICOM/SUB/IM2"]
        for member in members:
            assert member.path.is_relative_to((tmp_path / "out").resolve())
        assert (tmp_path / "out" / "DICOM" / "SUB" / "IM2").read_bytes() == b"two"

    @pytest.mark.parametrize(
        "name", ["../evil", "DICOM/../../evil", "/etc/evil", "..\\evil", "C:/evil"]
    )
    def test_refuses_zip_slip(self, tmp_path: Path, name: str) -> None:
        archive = _zip(tmp_path / "slip.zip", {"ok": b"fine", name: b"evil"})
        out = tmp_path / "deep" / "out"
        with pytest.raises(UnsafeArchiveError):
            extract_zip(archive, out)
        # Refused before anything was written, inside or outside.
        assert not (tmp_path / "deep" / "evil").exists()
        assert not (tmp_path / "evil").exists()
        assert not out.exists() or not any(out.iterdir())

    def test_refuses_total_size_bomb(self, tmp_path: Path) -> None:
        # 4 MiB of zeros deflates to a few KiB: the declared size is what counts.
        archive = _zip(tmp_path / "bomb.zip", {"a": bytes(4 << 20), "b": bytes(4 << 20)})
        assert archive.stat().st_size < 64 * 1024
        with pytest.raises(UnsafeArchiveError, match="zip bomb"):
            extract_zip(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=6 << 20))
        assert not (tmp_path / "out").exists()

    def test_refuses_too_many_entries(self, tmp_path: Path) -> None:
        archive = _zip(tmp_path / "many.zip", {f"f{i}": b"x" for i in range(20)})
        with pytest.raises(UnsafeArchiveError, match="entries"):
            extract_zip(archive, tmp_path / "out", ArchiveLimits(max_entries=10))

    def test_refuses_member_inflating_beyond_declared_size(self, tmp_path: Path) -> None:
        archive = _zip(tmp_path / "liar.zip", {"a": bytes(1 << 20)})
        # Rewrite the declared sizes (local header and central directory) to 1000 bytes.
        data = bytearray(archive.read_bytes())
        with zipfile.ZipFile(archive) as zf:
            info = zf.infolist()[0]
        central = data.rfind(b"PK\x01\x02")
        data[central + 24 : central + 28] = (1000).to_bytes(4, "little")
        data[info.header_offset + 22 : info.header_offset + 26] = (1000).to_bytes(4, "little")
        archive.write_bytes(bytes(data))
        with pytest.raises(UnsafeArchiveError):
            extract_zip(archive, tmp_path / "out")

    def test_refuses_symlink_entries(self, tmp_path: Path) -> None:
        archive = tmp_path / "link.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            info = zipfile.ZipInfo("link")
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        with pytest.raises(UnsafeArchiveError, match="symbolic link"):
            extract_zip(archive, tmp_path / "out")

    def test_refuses_duplicate_entries(self, tmp_path: Path) -> None:
        archive = tmp_path / "dup.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("a", b"1")
            with pytest.warns(UserWarning, match="Duplicate name"):
                zf.writestr("a", b"2")
        with pytest.raises(UnsafeArchiveError, match="duplicate"):
            extract_zip(archive, tmp_path / "out")

    def test_refuses_a_broken_archive(self, tmp_path: Path) -> None:
        archive = tmp_path / "broken.zip"
        archive.write_bytes(b"PK\x03\x04 not really")
        with pytest.raises(UnsafeArchiveError, match="not a readable ZIP"):
            extract_zip(archive, tmp_path / "out")
