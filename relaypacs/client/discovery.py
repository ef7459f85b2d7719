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
    "printable",
]

MAX_NAME_LENGTH = 255
_CLASSIFY_BATCH = 16  # files classified per thread call


class SkipReason(StrEnum):
    """Why a file found is not sent (the keys of ``--json``'s ``skipped`` and
    ``skipped_files``)."""

    NOT_DICOM = "not_dicom"  # not a DICOM file (nor a ZIP archive)
    NO_STUDY_UID = "no_study_uid"  # a DICOM data set without a (valid) StudyInstanceUID
    DAMAGED = "damaged"  # DICOM, but cut or broken before its StudyInstanceUID is read
    DICOMDIR = "dicomdir"  # the index of a CD export: never sent
    UNREADABLE = "unreadable"  # cannot be read: permissions, I/O error, gone, not a file
    NESTED_ARCHIVE = "nested_archive"  # a ZIP archive inside a ZIP archive
    FOLDER_LINK = "folder_link"  # a link to a folder inside a folder: not followed


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

    def skipped_names(self) -> dict[SkipReason, list[str]]:
        """The names of the skipped files by reason (in the order of SkipReason), each in
        the order found."""
        names: dict[SkipReason, list[str]] = {reason: [] for reason in SkipReason}
        for item in self.skipped:
            names[item.reason].append(item.name)
        return {reason: found for reason, found in names.items() if found}


# Bidirectional embeddings, overrides and isolates: they reorder what a terminal shows.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _shown(ch: str) -> bool:
    """Whether ``ch`` may be shown as it is: not a control character (C0, DEL, C1: a
    terminal escape), not half of an undecodable byte (a lone surrogate of a file name that
    is not UTF-8), not a bidirectional control."""
    code = ord(ch)
    return not (code < 32 or 127 <= code < 160 or 0xD800 <= code < 0xE000 or ch in _BIDI_CONTROLS)


def printable(text: str) -> str:
    """``text`` safe to show on a terminal: control characters, undecodable bytes and
    bidirectional controls become '?'."""
    return "".join(ch if _shown(ch) else "?" for ch in text)


def display_name(raw: str) -> str:
    """A manifest name: '/'-separated, at most 255 characters, every character printable."""
    cleaned = printable(raw)
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
    from relaypacs.client.dicomheader import read_instance

    path = candidate.path
    try:
        st = path.stat()
    except OSError:  # gone, or a dangling link
        return _Classified(candidate, None, 0, 0, SkipReason.UNREADABLE, archive=False)
    if not stat.S_ISREG(st.st_mode):  # a FIFO, a device, a socket: never opened
        return _Classified(candidate, None, 0, 0, SkipReason.UNREADABLE, archive=False)
    header = read_instance(path)
    if not isinstance(header, SkipReason):
        found = _discovered(candidate, header, st.st_size, st.st_mtime_ns)
        return _Classified(candidate, found, st.st_size, st.st_mtime_ns, None, archive=False)
    if header is SkipReason.NOT_DICOM and looks_like_zip(path):
        if candidate.in_archive:
            reason = SkipReason.NESTED_ARCHIVE
            return _Classified(candidate, None, st.st_size, st.st_mtime_ns, reason, archive=False)
        return _Classified(candidate, None, st.st_size, st.st_mtime_ns, None, archive=True)
    return _Classified(candidate, None, st.st_size, st.st_mtime_ns, header, archive=False)


def _import_header_reader() -> None:
    import relaypacs.client.dicomheader  # noqa: F401


def _walk(top: Path, exclude: frozenset[str] = frozenset()) -> Iterator[tuple[Path, bool]]:
    """The files under ``top``, sorted, without the folders in ``exclude`` (real paths); each
    with whether it is a link to a folder (listed, not followed: a link may loop)."""
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append):
        folders = []
        for name in sorted(dirnames):
            path = Path(dirpath) / name
            if os.path.realpath(path) in exclude:
                continue
            if path.is_symlink():
                yield path, True
            else:
                folders.append(name)
        dirnames[:] = folders
        for filename in sorted(filenames):
            yield Path(dirpath) / filename, False
    if errors:
        first = errors[0]
        raise InputError(f"cannot read folder {first.filename}: {first.strerror}")


class _Collector:
    """The files to classify, each real path once."""

    def __init__(self, exclude: Sequence[Path] = ()) -> None:
        self.candidates: list[_Candidate] = []
        self.folder_links: list[SkippedFile] = []
        self._seen: set[str] = set()
        self._exclude = frozenset(os.path.realpath(p) for p in exclude)

    def collect_inputs(self, paths: Sequence[Path]) -> None:
        """Runs in a worker thread: list the files under the paths the user named."""
        for raw in paths:
            path = Path(raw).expanduser().absolute()
            if path.is_dir():
                for file_path, folder_link in _walk(path, self._exclude):
                    name = file_path.relative_to(path).as_posix()
                    if folder_link:
                        skipped = SkippedFile(display_name(name), SkipReason.FOLDER_LINK)
                        self.folder_links.append(skipped)
                    else:
                        self.add_file(file_path, name)
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
    result = Discovery(skipped=list(collector.folder_links))
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
