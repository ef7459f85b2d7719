"""Safe extraction of ZIP archives: no zip-slip, bounded entry count and total size."""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from relaypacs.client.errors import UnsafeArchiveError

__all__ = ["ArchiveLimits", "ExtractedMember", "extract_zip", "looks_like_zip"]

_COPY_BUFFER = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Bounds against zip bombs; checked against the central directory before writing, and
    again against the bytes actually inflated."""

    max_entries: int = 100_000
    max_total_bytes: int = 64 * 1024**3
    # Free space to leave on the extraction file system, beyond the archive's content.
    reserve_bytes: int = 256 * 1024**2


@dataclass(frozen=True, slots=True)
class ExtractedMember:
    """One regular file written from an archive."""

    name: str  # normalised path inside the archive, '/'-separated
    path: Path  # where it was written
    size: int


def looks_like_zip(path: Path) -> bool:
    """A ZIP archive by its name, or by its local-file-header signature."""
    if path.suffix.lower() == ".zip":
        return True
    try:
        with path.open("rb") as stream:
            return stream.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _safe_member_path(raw_name: str) -> PurePosixPath | None:
    """The relative path of a member, or None for a directory entry; refuses zip-slip."""
    name = raw_name.replace("\\", "/")
    if "\x00" in name:
        raise UnsafeArchiveError(f"archive entry with a NUL byte in its name: {raw_name!r}")
    if name.endswith("/"):
        return None
    if name.startswith("/") or (len(name) >= 2 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive entry with an absolute path: {raw_name!r}")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts:
        return None
    if any(part == ".." for part in parts):
        raise UnsafeArchiveError(f"archive entry escaping the archive (zip-slip): {raw_name!r}")
    return PurePosixPath(*parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def extract_zip(
    archive: Path, destination: Path, limits: ArchiveLimits | None = None
) -> list[ExtractedMember]:
    """Extract the regular files of ``archive`` under ``destination`` (which must be empty).

    The whole archive is refused (UnsafeArchiveError) before anything is written when an
    entry would land outside ``destination``, names a symlink, is encrypted, or when the
    entry count, the declared total size or the free space are out of bounds. While
    inflating, no entry may produce more bytes than it declared.
    """
    limits = limits or ArchiveLimits()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError(f"{archive.name}: not a readable ZIP archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise UnsafeArchiveError(
                f"{archive.name}: {len(infos)} entries, more than the limit of "
                f"{limits.max_entries} (zip bomb?)"
            )
        planned: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        seen: set[str] = set()
        total = 0
        for info in infos:
            relative = _safe_member_path(info.filename)
            if relative is None or info.is_dir():
                continue
            if _is_symlink(info):
                raise UnsafeArchiveError(f"{archive.name}: symbolic link entry {info.filename!r}")
            if info.flag_bits & 0x1:
                raise UnsafeArchiveError(f"{archive.name}: encrypted entries are not supported")
            key = str(relative).casefold()
            if key in seen:
                raise UnsafeArchiveError(f"{archive.name}: duplicate entry {info.filename!r}")
            seen.add(key)
            total += info.file_size
            if total > limits.max_total_bytes:
                raise UnsafeArchiveError(
                    f"{archive.name}: uncompressed content larger than the limit of "
                    f"{limits.max_total_bytes} bytes (zip bomb?)"
                )
            planned.append((info, relative))

        destination.mkdir(mode=0o700, parents=True, exist_ok=True)
        free = shutil.disk_usage(destination).free
        if total + limits.reserve_bytes > free:
            raise UnsafeArchiveError(
                f"{archive.name}: needs {total} bytes to extract, only {free} free in {destination}"
            )
        root = destination.resolve()
        extracted: list[ExtractedMember] = []
        for info, relative in planned:
            target = root.joinpath(*relative.parts)
            # Defence in depth: the checked name must still resolve inside the root.
            if not target.resolve().is_relative_to(root):
                raise UnsafeArchiveError(f"{archive.name}: entry escapes: {info.filename!r}")
            try:
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                written = _copy_member(zf, info, target, archive.name)
            except OSError as exc:
                raise UnsafeArchiveError(
                    f"{archive.name}: cannot extract {info.filename!r}: {exc.strerror or exc}"
                ) from exc
            extracted.append(ExtractedMember(name=str(relative), path=target, size=written))
        return extracted


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, label: str) -> int:
    written = 0
    try:
        with zf.open(info) as source, target.open("xb") as sink:
            while True:
                block = source.read(_COPY_BUFFER)
                if not block:
                    break
                written += len(block)
                if written > info.file_size:
                    raise UnsafeArchiveError(
                        f"{label}: entry {info.filename!r} inflates beyond its declared size"
                    )
                sink.write(block)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError) as exc:
        raise UnsafeArchiveError(f"{label}: cannot extract {info.filename!r}: {exc}") from exc
    except FileExistsError as exc:
        raise UnsafeArchiveError(f"{label}: entry {info.filename!r} written twice") from exc
    return written
