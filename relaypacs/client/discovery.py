"""Find the DICOM instances in what the user named: folders, files and ZIP archives, mixed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from relaypacs.client.archive import ArchiveLimits, extract_zip, looks_like_zip
from relaypacs.client.errors import InputError

if TYPE_CHECKING:
    # Imported when files are classified: the DICOM walker loads the data dictionary, which
    # `relaypacs --help` and the other commands should not pay for.
    from relaypacs.client.dicomheader import StudyHeader

__all__ = [
    "DiscoveredFile",
    "Discovery",
    "SkipReason",
    "SkippedFile",
    "discover",
    "display_name",
    "extraction_workspace",
]

MAX_NAME_LENGTH = 255
_CLASSIFY_BATCH = 16  # files classified per thread call


class SkipReason(StrEnum):
    NOT_DICOM = "not_dicom"
    DICOMDIR = "dicomdir"
    UNREADABLE = "unreadable"
    NESTED_ARCHIVE = "nested_archive"


@dataclass(frozen=True, slots=True)
class DiscoveredFile:
    """A DICOM instance found on disk (or extracted from an archive)."""

    path: Path  # the bytes to send
    name: str  # display name: the path inside the folder or archive the user named
    size: int
    mtime_ns: int  # of ``path``; checked again before each chunk is read
    cache_key: str  # origin of the bytes, for the hash cache (stable across runs)
    cache_mtime_ns: int  # mtime of the origin (the archive for an extracted member)
    header: StudyHeader
    from_archive: bool = False


@dataclass(frozen=True, slots=True)
class SkippedFile:
    name: str
    reason: SkipReason


@dataclass(slots=True)
class Discovery:
    files: list[DiscoveredFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)

    def skipped_count(self, reason: SkipReason) -> int:
        return sum(1 for item in self.skipped if item.reason is reason)


def display_name(raw: str) -> str:
    """A manifest name: '/'-separated, no control characters, at most 255 characters."""
    cleaned = "".join("?" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in raw)
    cleaned = cleaned.replace("\\", "/").lstrip("/") or "unnamed"
    if len(cleaned) > MAX_NAME_LENGTH:
        # Keep the end: the file name is more telling than the leading folders.
        cleaned = "..." + cleaned[-(MAX_NAME_LENGTH - 3) :]
    return cleaned


@contextlib.contextmanager
def extraction_workspace(state_dir: Path) -> Iterator[Path]:
    """A private directory for extracted archives, removed on exit.

    Directories left by runs that were killed (their process is gone) are removed first:
    extracted studies are PHI and must not pile up in the state directory.
    """
    root = state_dir / "extract"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in root.glob("run-*"):
        pid_text = stale.name.split("-")[1] if stale.name.count("-") >= 2 else ""
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(stale, ignore_errors=True)
    workspace = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root))
    try:
        yield workspace
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: Path
    name: str
    cache_key: str
    cache_mtime_ns: int | None  # None: use the file's own mtime
    in_archive: bool


@dataclass(frozen=True, slots=True)
class _Classified:
    candidate: _Candidate
    file: DiscoveredFile | None  # a DICOM instance
    size: int
    mtime_ns: int
    reason: SkipReason | None
    archive: bool


def _classify(candidate: _Candidate) -> _Classified:
    """Runs in a worker thread: stat and header read of one file."""
    from relaypacs.client.dicomheader import is_dicomdir, read_header

    path = candidate.path
    try:
        st = path.stat()
    except OSError:
        return _Classified(candidate, None, 0, 0, SkipReason.UNREADABLE, archive=False)
    if not stat.S_ISREG(st.st_mode):
        return _Classified(candidate, None, 0, 0, SkipReason.UNREADABLE, archive=False)
    header = read_header(path)
    if header is not None:
        found = _discovered(candidate, header, st.st_size, st.st_mtime_ns)
        return _Classified(candidate, found, st.st_size, st.st_mtime_ns, None, archive=False)
    # Only now (one system call less per instance): no header, because it cannot be read?
    if not os.access(path, os.R_OK):
        return _Classified(
            candidate, None, st.st_size, st.st_mtime_ns, SkipReason.UNREADABLE, archive=False
        )
    if looks_like_zip(path):
        if candidate.in_archive:
            reason = SkipReason.NESTED_ARCHIVE
            return _Classified(candidate, None, st.st_size, st.st_mtime_ns, reason, archive=False)
        return _Classified(candidate, None, st.st_size, st.st_mtime_ns, None, archive=True)
    reason = SkipReason.DICOMDIR if is_dicomdir(path) else SkipReason.NOT_DICOM
    return _Classified(candidate, None, st.st_size, st.st_mtime_ns, reason, archive=False)


def _import_header_reader() -> None:
    import relaypacs.client.dicomheader  # noqa: F401


def _walk(top: Path, exclude: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Regular files under ``top``, sorted, without following directory symlinks, and
    without the folders in ``exclude`` (real paths)."""
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append):
        dirnames[:] = sorted(
            d for d in dirnames if os.path.realpath(Path(dirpath) / d) not in exclude
        )
        for filename in sorted(filenames):
            yield Path(dirpath) / filename
    if errors:
        first = errors[0]
        raise InputError(f"cannot read folder {first.filename}: {first.strerror}")


class _Collector:
    """The files to classify, each real path once."""

    def __init__(self, exclude: Sequence[Path] = ()) -> None:
        self.candidates: list[_Candidate] = []
        self._seen: set[str] = set()
        self._exclude = frozenset(os.path.realpath(p) for p in exclude)

    def collect_inputs(self, paths: Sequence[Path]) -> None:
        """Runs in a worker thread: list the files under the paths the user named."""
        for raw in paths:
            path = Path(raw).expanduser().absolute()
            if path.is_dir():
                for file_path in _walk(path, self._exclude):
                    self.add_file(file_path, file_path.relative_to(path).as_posix())
            elif path.exists():
                self.add_file(path, path.name)
            else:
                raise InputError(f"no such file or folder: {raw}")

    def add_file(self, path: Path, name: str) -> None:
        real = os.path.realpath(path)
        if real not in self._seen:
            self._seen.add(real)
            self.candidates.append(
                _Candidate(path, display_name(name), real, None, in_archive=False)
            )

    def add_member(self, path: Path, name: str, key: str, archive_mtime_ns: int) -> _Candidate:
        candidate = _Candidate(path, display_name(name), key, archive_mtime_ns, in_archive=True)
        self.candidates.append(candidate)
        return candidate


async def discover(
    paths: Sequence[Path],
    *,
    workspace: Path,
    archive_limits: ArchiveLimits | None = None,
    workers: int = 8,
    on_file: Callable[[DiscoveredFile], None] | None = None,
    exclude: Sequence[Path] = (),
) -> Discovery:
    """Classify every file under ``paths``; extract archives into ``workspace``. ``on_file``
    is called with each DICOM instance as soon as it is found (e.g. to start hashing it).
    Folders in ``exclude`` (the client's own state: hash cache, extracted archives) are not
    searched when a folder the user named contains them.

    Raises InputError for a path that does not exist or a folder that cannot be listed, and
    UnsafeArchiveError for an archive that must not be extracted: nothing is uploaded then.
    """
    collector = _Collector(exclude)
    await asyncio.to_thread(collector.collect_inputs, paths)
    # Import the header reader once here, rather than racing to in every worker thread.
    await asyncio.to_thread(_import_header_reader)
    candidates = collector.candidates
    result = Discovery()
    semaphore = asyncio.Semaphore(max(1, workers))

    async def classify(batch: list[_Candidate]) -> list[_Classified]:
        async with semaphore:
            items = await asyncio.to_thread(lambda: [_classify(c) for c in batch])
        if on_file is not None:
            for item in items:
                if item.file is not None:
                    on_file(item.file)
        return items

    pending = candidates
    archive_number = 0
    while pending:
        # A few files per thread call: one call per file cost more in the event loop (task,
        # future, thread hand-over) than reading the file's header.
        batches = [
            pending[i : i + _CLASSIFY_BATCH] for i in range(0, len(pending), _CLASSIFY_BATCH)
        ]
        classified = [
            item
            for items in await asyncio.gather(*(classify(b) for b in batches))
            for item in items
        ]
        pending = []
        for item in classified:
            candidate = item.candidate
            if item.archive:
                archive_number += 1
                target = workspace / f"archive-{archive_number}"
                members = await asyncio.to_thread(
                    extract_zip, candidate.path, target, archive_limits
                )
                result.archives.append(candidate.name)
                archive_key = candidate.cache_key  # the archive's real path
                for member in members:
                    # Named as the member inside the archive, prefixed by the archive's
                    # folder when the archive was found inside a folder the user named.
                    parent = str(PurePosixPath(candidate.name).parent)
                    name = member.name if parent == "." else f"{parent}/{member.name}"
                    pending.append(
                        collector.add_member(
                            member.path, name, f"{archive_key}!{member.name}", item.mtime_ns
                        )
                    )
            elif item.reason is not None:
                result.skipped.append(SkippedFile(candidate.name, item.reason))
            elif item.file is not None:
                result.files.append(item.file)
    return result


def _discovered(
    candidate: _Candidate, header: StudyHeader, size: int, mtime_ns: int
) -> DiscoveredFile:
    cache_mtime = mtime_ns if candidate.cache_mtime_ns is None else candidate.cache_mtime_ns
    return DiscoveredFile(
        path=candidate.path,
        name=candidate.name,
        size=size,
        mtime_ns=mtime_ns,
        cache_key=candidate.cache_key,
        cache_mtime_ns=cache_mtime,
        header=header,
        from_archive=candidate.in_archive,
    )
