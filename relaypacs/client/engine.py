"""The upload engine: discover, hash, then for each study init, send missing chunks, complete.

The server's ``missing_chunks`` is the truth: a run killed at any point and started again sends
exactly the chunks the server does not have.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from relaypacs.client.api import (
    GatewayClient,
    RemoteUpload,
    StartOutcome,
    content_digest,
    content_digest_of,
)
from relaypacs.client.archive import ArchiveLimits
from relaypacs.client.delivery import (
    NOT_DELIVERED,
    NOT_FOLLOWED,
    Delivery,
    DeliveryStatus,
    delivery_of,
)
from relaypacs.client.discovery import Discovery, discover, extraction_workspace
from relaypacs.client.errors import (
    ApiError,
    AuthenticationError,
    ClientError,
    ExitCode,
    ServerUnreachableError,
)
from relaypacs.client.hashing import HashCache, Hasher
from relaypacs.client.manifest import FileProblem, StudyFile, StudyPlan, group_studies, hash_jobs
from relaypacs.client.state import ensure_state_dir

__all__ = [
    "ACCEPTED",
    "ExitCode",
    "NullProgress",
    "ProgressListener",
    "RunSummary",
    "StudyResult",
    "StudyStatus",
    "UploadOptions",
    "run_upload",
    "upload_study",
    "wait_for_delivery",
]


class StudyStatus(StrEnum):
    VALIDATED = "validated"  # complete answered 202: accepted for forwarding
    ALREADY_DELIVERED = "already_delivered"  # 409 study_already_delivered at init
    REJECTED = "rejected"  # the server's validation refused files (422 upload_rejected)
    FAILED = "failed"  # a permanent error here or on a chunk; not completed
    INTERRUPTED = "interrupted"  # gave up after retries or lost the upload: run again
    NOT_STARTED = "not_started"  # the run stopped before this study


# The gateway has the study: validated now, or earlier.
ACCEPTED = frozenset({StudyStatus.VALIDATED, StudyStatus.ALREADY_DELIVERED})

# Chunk errors that are worth a few more tries (nothing was kept by the server).
_TRANSIENT_CHUNK_CODES = frozenset({"content_md5_mismatch", "content_digest_mismatch"})


@dataclass(slots=True)
class UploadOptions:
    parallel: int = 4
    hash_workers: int = max(1, min(4, os.cpu_count() or 1))
    state_dir: Path | None = None
    archive_limits: ArchiveLimits | None = None
    # How many times ``complete`` may answer upload_incomplete before giving up.
    complete_rounds: int = 3
    # How long to poll an upload still being validated after ``complete``.
    validation_wait_seconds: float = 600.0
    # --wait: follow every accepted study until the PACS has it (or refused some instance).
    wait: bool = False
    wait_timeout: float = 3600.0
    # Seconds between polls of a study: the first, and the most when nothing changes.
    wait_poll_min: float = 1.0
    wait_poll_max: float = 5.0


class ProgressListener(Protocol):
    """What the engine tells a progress display; every call happens on the event loop."""

    def discovered(self, discovery: Discovery, studies: Sequence[StudyPlan]) -> None: ...
    def hashing(self, total_bytes: int) -> None: ...
    def hashed(self, n_bytes: int) -> None: ...
    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None: ...
    def sent(self, n_bytes: int) -> None: ...
    def study_finished(self, result: StudyResult) -> None: ...
    # --wait: the studies followed, then each one's ``delivery`` after every poll, then final.
    def waiting(self, results: Sequence[StudyResult]) -> None: ...
    def delivery_progress(self, result: StudyResult) -> None: ...
    def delivery_finished(self, result: StudyResult) -> None: ...


class NullProgress:
    def discovered(self, discovery: Discovery, studies: Sequence[StudyPlan]) -> None:
        pass

    def hashing(self, total_bytes: int) -> None:
        pass

    def hashed(self, n_bytes: int) -> None:
        pass

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        pass

    def sent(self, n_bytes: int) -> None:
        pass

    def study_finished(self, result: StudyResult) -> None:
        pass

    def waiting(self, results: Sequence[StudyResult]) -> None:
        pass

    def delivery_progress(self, result: StudyResult) -> None:
        pass

    def delivery_finished(self, result: StudyResult) -> None:
        pass


@dataclass(slots=True)
class StudyResult:
    study_instance_uid: str
    status: StudyStatus
    upload_id: str | None = None
    number: int = 0  # the study's place in the run (StudyPlan.number)
    files: int = 0  # found: to send, and conflicting copies (not sent)
    instances: int = 0  # the gateway has (0 unless accepted)
    total_bytes: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0  # already on the server
    chunks_sent: int = 0
    chunks_already_stored: int = 0  # sent, but the server said it had them already
    duplicates_skipped: int = 0
    modalities: list[str] = field(default_factory=list)
    study_date: str = ""
    errors: list[FileProblem] = field(default_factory=list)
    message: str | None = None
    # Set when this study stopped the whole run: "auth" or "unreachable".
    abort: str | None = None
    # With --wait: where the study stands with the PACS (None: not followed).
    delivery: Delivery | None = None

    @property
    def file_count(self) -> int:
        """``files`` (as StudyPlan.file_count)."""
        return self.files

    @property
    def accepted(self) -> bool:
        """Whether the gateway has the study (validated, now or before)."""
        return self.status in ACCEPTED

    @property
    def files_refused(self) -> int:
        """The files named in ``errors``: refused by the gateway's validation or on their
        way there, or conflicting copies."""
        return len({problem.name for problem in self.errors})

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "study_instance_uid": self.study_instance_uid,
            "upload_id": self.upload_id,
            "status": self.status.value,
            "accepted": self.accepted,
            "files": self.files,
            "instances": self.instances,
            "total_bytes": self.total_bytes,
            "bytes_sent": self.bytes_sent,
            "bytes_skipped": self.bytes_skipped,
            "chunks_sent": self.chunks_sent,
            "chunks_already_stored": self.chunks_already_stored,
            "duplicates_skipped": self.duplicates_skipped,
            "modalities": list(self.modalities),
            "study_date": self.study_date,
            "errors": [e.as_dict() for e in self.errors],
            "message": self.message,
            "delivery": None if self.delivery is None else self.delivery.as_dict(),
        }


@dataclass(slots=True)
class RunSummary:
    studies: list[StudyResult] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # by SkipReason value
    skipped_files: dict[str, list[str]] = field(default_factory=dict)  # their names
    archives: int = 0
    hash_cache_hits: int = 0
    error: str | None = None  # why the run stopped early, if it did
    error_kind: str | None = None  # "auth", "unreachable", "input"
    # Wall-clock seconds per phase: discover_seconds, hash_seconds, upload_seconds and, with
    # --wait, wait_seconds.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """4 auth failed, else 3 gave up (resumable) or stopped waiting for the PACS, else 1
        rejected/failed, else 5 not delivered (--wait), else 0; 2 when there was nothing to
        upload or the input was refused."""
        if self.error_kind == "auth":
            return ExitCode.AUTH
        if self.error_kind == "input":
            return ExitCode.USAGE
        statuses = {s.status for s in self.studies}
        if (
            self.error_kind == "unreachable"
            or statuses & {StudyStatus.INTERRUPTED, StudyStatus.NOT_STARTED}
            or self.wait_unfinished
        ):
            return ExitCode.UNREACHABLE
        if statuses & {StudyStatus.REJECTED, StudyStatus.FAILED}:
            return ExitCode.REJECTED
        if any(d.status in NOT_DELIVERED for d in self.deliveries):
            return ExitCode.NOT_DELIVERED
        if not self.studies:
            return ExitCode.USAGE
        return ExitCode.OK

    @property
    def deliveries(self) -> list[Delivery]:
        return [s.delivery for s in self.studies if s.delivery is not None]

    @property
    def wait_unfinished(self) -> bool:
        """Whether --wait stopped following some study before its end (timed out, or the
        gateway could not be asked): the gateway goes on forwarding it."""
        return any(d.status in NOT_FOLLOWED for d in self.deliveries)

    def as_dict(self) -> dict[str, Any]:
        def count(status: StudyStatus) -> int:
            return sum(1 for s in self.studies if s.status is status)

        accepted = [s for s in self.studies if s.accepted]
        not_accepted = [s for s in self.studies if not s.accepted]
        return {
            "exit_code": self.exit_code,
            "error": self.error,
            "studies": [s.as_dict() for s in self.studies],
            "skipped": dict(self.skipped),
            "skipped_files": {reason: list(names) for reason, names in self.skipped_files.items()},
            "archives": self.archives,
            "timings": {key: round(value, 3) for key, value in self.timings.items()},
            "totals": {
                "studies": len(self.studies),
                **{status.value: count(status) for status in StudyStatus},
                "studies_accepted": len(accepted),
                "studies_not_accepted": len(not_accepted),
                # What the gateway accepted (validated now or before).
                "files": sum(s.files for s in accepted),
                "instances": sum(s.instances for s in accepted),
                "total_bytes": sum(s.total_bytes for s in accepted),
                # What this run sent (to every study, accepted or not), what it did not
                # have to send (on the gateway already).
                "bytes_sent": sum(s.bytes_sent for s in self.studies),
                "bytes_skipped": sum(s.bytes_skipped for s in self.studies),
                "chunks_sent": sum(s.chunks_sent for s in self.studies),
                "chunks_already_stored": sum(s.chunks_already_stored for s in self.studies),
                "hash_cache_hits": self.hash_cache_hits,
                # Everything found, and what of it the gateway does not have.
                "files_found": sum(s.files for s in self.studies),
                "bytes_found": sum(s.total_bytes for s in self.studies),
                "files_not_accepted": sum(s.files for s in not_accepted),
                "files_refused": sum(s.files_refused for s in self.studies),
                "files_skipped": sum(self.skipped.values()),
                "duplicates_skipped": sum(s.duplicates_skipped for s in self.studies),
                # With --wait: the instances the PACS confirmed, and refused.
                "pacs_confirmed": sum(d.confirmed for d in self.deliveries),
                "pacs_refused": sum(d.failed or len(d.failures) for d in self.deliveries),
            },
        }


# -- one study ----------------------------------------------------------------------------


class _FileChangedError(Exception):
    pass


def _read_chunk(file: StudyFile, offset: int, length: int) -> tuple[bytes, str]:
    """Runs in a worker thread: read one chunk by offset, checking the file did not change;
    the bytes and their Content-Digest. A chunk that is the whole file takes the file's
    SHA-256 from the manifest: hashing it again would give the same, unless the file changed
    without its size or mtime changing, which the server then refuses (and the retry sends
    the bytes' own digest). Any other chunk is hashed here, off the event loop."""
    fd = os.open(file.path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if st.st_size != file.size or st.st_mtime_ns != file.mtime_ns:
            raise _FileChangedError
        parts: list[bytes] = []
        done = 0
        while done < length:
            block = os.pread(fd, length - done, offset + done)
            if not block:
                raise _FileChangedError
            parts.append(block)
            done += len(block)
    finally:
        os.close(fd)
    data = b"".join(parts) if len(parts) != 1 else parts[0]
    if offset == 0 and length == file.size:
        return data, content_digest(file.sha256)
    return data, content_digest_of(data)


def _chunk_length(size: int, chunk_size: int, chunk_index: int) -> int:
    return max(0, min(chunk_size, size - chunk_index * chunk_size))


class _StopSending(Exception):
    """The upload no longer takes chunks (completed or cancelled elsewhere)."""


class _UploadLost(Exception):
    """The upload disappeared on the server (cancelled or cleaned up)."""


@dataclass(slots=True)
class _StudyRun:
    client: GatewayClient
    plan: StudyPlan
    options: UploadOptions
    progress: ProgressListener
    result: StudyResult
    upload: RemoteUpload | None = None
    by_index: dict[int, StudyFile] = field(default_factory=dict)
    failed_files: set[int] = field(default_factory=set)

    def map_files(self, upload: RemoteUpload) -> str | None:
        """Match the server's file indexes to our files by content; an error text if not."""
        by_hash = {f.sha256: f for f in self.plan.files}
        if len(upload.files) != len(self.plan.files):
            return f"the server lists {len(upload.files)} files, we have {len(self.plan.files)}"
        for remote in upload.files:
            local = by_hash.get(remote.sha256)
            if local is None or local.size != remote.size:
                return f"the server's file {remote.index} is not one of ours"
            self.by_index[remote.index] = local
        return None

    def chunk_bytes(self, chunks: Sequence[tuple[int, int]]) -> int:
        assert self.upload is not None
        return sum(
            _chunk_length(self.by_index[f].size, self.upload.chunk_size, c) for f, c in chunks
        )

    async def send_chunks(self, chunks: Sequence[tuple[int, int]]) -> None:
        """Send ``chunks`` with up to ``parallel`` requests in flight."""
        assert self.upload is not None
        upload = self.upload
        pending: Iterator[tuple[int, int]] = iter(sorted(chunks))
        stop = asyncio.Event()

        async def send_one(file_index: int, chunk_index: int) -> None:
            file = self.by_index[file_index]
            length = _chunk_length(file.size, upload.chunk_size, chunk_index)
            if length <= 0:
                self.fail(file_index, "chunk_out_of_range", f"no chunk {chunk_index} here")
                return
            try:
                data, digest = await asyncio.to_thread(
                    _read_chunk, file, chunk_index * upload.chunk_size, length
                )
            except _FileChangedError:
                self.fail(file_index, "file_changed", "modified since it was hashed; run again")
                return
            except OSError as exc:
                self.fail(file_index, "file_unreadable", exc.strerror or str(exc))
                return
            for attempt in range(3):
                try:
                    receipt = await self.client.put_chunk(
                        upload.id, file_index, chunk_index, data, digest=digest
                    )
                except ApiError as exc:
                    if exc.code in _TRANSIENT_CHUNK_CODES and attempt < 2:
                        # The bytes may not be the file we hashed (changed in place): send
                        # them with their own digest; `complete` then names the file.
                        digest = await asyncio.to_thread(content_digest_of, data)
                        continue
                    if exc.code == "upload_not_writable":
                        raise _StopSending from exc
                    if exc.code == "upload_not_found":
                        raise _UploadLost from exc
                    self.fail(file_index, exc.code, f"chunk {chunk_index}: {exc.message}")
                    return
                break
            self.result.chunks_sent += 1
            self.result.bytes_sent += length
            if receipt.already_stored:
                self.result.chunks_already_stored += 1
            self.progress.sent(length)

        async def worker() -> None:
            while not stop.is_set():
                item = next(pending, None)
                if item is None:
                    return
                if item[0] in self.failed_files:
                    continue
                try:
                    await send_one(*item)
                except _StopSending:
                    stop.set()
                    return

        workers = max(1, min(self.options.parallel, len(chunks)))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker())
        except BaseExceptionGroup as group_error:
            raise _most_serious(group_error) from None

    def fail(self, file_index: int, code: str, message: str) -> None:
        if file_index in self.failed_files:
            return
        self.failed_files.add(file_index)
        self.result.errors.append(FileProblem(self.by_index[file_index].name, code, message))

    async def complete(self) -> None:
        assert self.upload is not None
        for _ in range(self.options.complete_rounds):
            try:
                final = await self.client.complete_upload(self.upload.id)
            except ApiError as exc:
                if exc.code == "upload_incomplete":
                    missing = _missing_from_details(exc.details)
                    if not missing:
                        missing = (await self.client.get_upload(self.upload.id)).missing_chunks
                    await self.send_chunks(missing)
                    if self.failed_files:
                        self.result.status = StudyStatus.FAILED
                        return
                    continue
                if exc.code == "upload_rejected":
                    self.reject(exc.details)
                    return
                if exc.code == "upload_not_found":
                    raise _UploadLost from exc
                self.result.status = StudyStatus.FAILED
                self.result.message = f"complete refused: {exc.message} ({exc.code})"
                return
            await self.settle(final)
            return
        self.result.status = StudyStatus.INTERRUPTED
        self.result.message = "the server still misses chunks after several rounds; run again"

    async def settle(self, upload: RemoteUpload) -> None:
        """Turn the upload's status after ``complete`` into ours."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.validation_wait_seconds
        delay = 0.5
        while upload.status in ("received", "pending") and loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            upload = await self.client.get_upload(upload.id)
        if upload.instance_count is not None:
            self.result.instances = upload.instance_count
        if upload.status == "rejected":
            self.result.status = StudyStatus.REJECTED
            self.result.errors.extend(
                FileProblem(f.name, _error_code(f.error), _error_message(f.error))
                for f in upload.files
                if f.status == "rejected"
            )
        elif upload.status in ("received", "pending"):
            self.result.status = StudyStatus.INTERRUPTED
            self.result.message = "the server is still validating; run again to see the result"
        elif upload.status == "cancelled":
            self.result.status = StudyStatus.FAILED
            self.result.message = "the upload was cancelled on the server"
        else:
            # validated, or any later delivery status.
            self.result.status = StudyStatus.VALIDATED

    def reject(self, details: dict[str, Any]) -> None:
        self.result.status = StudyStatus.REJECTED
        for item in details.get("files") or ():
            if not isinstance(item, dict):
                continue
            index = item.get("index")
            local = self.by_index.get(index) if isinstance(index, int) else None
            name = local.name if local is not None else str(item.get("name", f"#{index}"))
            self.result.errors.append(
                FileProblem(name, str(item.get("code", "rejected")), str(item.get("message", "")))
            )
        if not self.result.errors:
            self.result.message = "the server rejected the study"


# When several workers fail at once, the error that says most about what to do next.
_SERIOUSNESS: tuple[type[BaseException], ...] = (
    AuthenticationError,
    ServerUnreachableError,
    _UploadLost,
)


def _most_serious(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def flatten(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                flatten(inner)
        else:
            leaves.append(error)

    flatten(group)
    for kind in _SERIOUSNESS:
        for error in leaves:
            if isinstance(error, kind):
                return error
    return leaves[0]


def _missing_from_details(details: dict[str, Any]) -> list[tuple[int, int]]:
    missing: list[tuple[int, int]] = []
    for item in details.get("missing") or ():
        if isinstance(item, dict) and isinstance(item.get("file_index"), int):
            missing.extend((item["file_index"], int(c)) for c in item.get("missing_chunks") or ())
    return missing


def _error_code(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("code", "rejected"))
    return "rejected"


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return "" if error is None else str(error)


async def upload_study(
    client: GatewayClient,
    plan: StudyPlan,
    *,
    options: UploadOptions | None = None,
    progress: ProgressListener | None = None,
) -> StudyResult:
    """Upload one study and complete it.

    Never raises for the server's answers: giving up after retries or an authentication
    failure gives an INTERRUPTED result whose ``abort`` says the run should stop. A later
    ``--wait`` (PACS delivery) step plugs in after this returns VALIDATED: the result carries
    the upload id.
    """
    options = options or UploadOptions()
    progress = progress or NullProgress()
    result = StudyResult(
        study_instance_uid=plan.study_instance_uid,
        status=StudyStatus.NOT_STARTED,
        number=plan.number,
        files=plan.file_count,
        instances=len(plan.files),
        total_bytes=plan.total_bytes,
        duplicates_skipped=len(plan.duplicates),
        modalities=list(plan.modalities),
        study_date=plan.study_date,
    )
    if plan.conflicts:
        result.status = StudyStatus.FAILED
        result.instances = 0
        result.errors.extend(plan.conflicts)
        result.message = "two files have the same SOP Instance UID and different content"
        return result
    try:
        for attempt in (1, 2):
            run = _StudyRun(client, plan, options, progress, result)
            try:
                await _upload(run, announce=attempt == 1)
                break
            except _UploadLost:
                if attempt == 2:
                    raise
                # Cancelled or cleaned up on the server meanwhile, or not visible yet right
                # after its creation: init again, which resumes it or starts anew.
                await asyncio.sleep(1.0)
    except _UploadLost:
        result.status = StudyStatus.INTERRUPTED
        result.message = "the upload was removed on the server; run again to start it anew"
    except ServerUnreachableError as exc:
        result.status = StudyStatus.INTERRUPTED
        result.message = str(exc)
        result.abort = "unreachable"
    except AuthenticationError as exc:
        result.status = StudyStatus.INTERRUPTED
        result.message = str(exc)
        result.abort = "auth"
    except ApiError as exc:
        result.status = StudyStatus.FAILED
        result.message = f"{exc.message} ({exc.code})"
        problems = exc.details.get("problems")
        if isinstance(problems, list) and problems:
            result.message += ": " + "; ".join(
                f"{p.get('field')}: {p.get('message')}" for p in problems if isinstance(p, dict)
            )
    if not result.accepted:
        result.instances = 0  # the gateway has none of them
    return result


async def _upload(run: _StudyRun, *, announce: bool) -> None:
    plan, result = run.plan, run.result
    start = await run.client.start_upload(plan.manifest())
    result.upload_id = start.upload.id
    if start.outcome is StartOutcome.ALREADY_DELIVERED:
        result.status = StudyStatus.ALREADY_DELIVERED
        result.bytes_skipped = plan.total_bytes
        if start.upload.instance_count is not None:
            result.instances = start.upload.instance_count
        if announce:
            run.progress.study_started(plan, plan.total_bytes, plan.total_bytes)
        return
    run.upload = start.upload
    problem = run.map_files(start.upload)
    if problem is not None:
        result.status = StudyStatus.FAILED
        result.message = f"server manifest mismatch: {problem}"
        return
    missing = start.upload.missing_chunks if start.upload.status == "pending" else []
    missing_bytes = run.chunk_bytes(missing)
    result.bytes_skipped = plan.total_bytes - missing_bytes
    if announce:
        run.progress.study_started(plan, plan.total_bytes, result.bytes_skipped)
    await run.send_chunks(missing)
    if run.failed_files:
        result.status = StudyStatus.FAILED
        result.message = "some chunks were refused; the study was not completed"
        return
    await run.complete()


# -- waiting for the PACS (--wait) -------------------------------------------------------

# Past --wait-timeout, a poll in progress (with its retries) gets this long to answer.
_LAST_POLL_GRACE = 30.0
# A poll of a big study is not free for the gateway (~0.05 ms per file here): the next one waits
# at least this many times as long as the last one took (up to _MAX_POLL_FLOOR seconds).
_POLL_DUTY_FACTOR = 20.0
_MAX_POLL_FLOOR = 30.0


async def wait_for_delivery(
    client: GatewayClient,
    results: Sequence[StudyResult],
    *,
    options: UploadOptions | None = None,
    progress: ProgressListener | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Follow every accepted study (validated or already delivered) of ``results`` until the
    PACS has it, refused some instance, or ``options.wait_timeout`` ran out; sets each one's
    ``delivery``. The studies are followed together, each polled every ``wait_poll_min``
    seconds while it moves, backing off to ``wait_poll_max`` while it does not, and never more
    often than 1/20 of the time its answers take (a study of thousands of files).

    Raises AuthenticationError; a gateway that cannot be reached any more makes the studies
    UNREACHABLE (the gateway goes on forwarding them meanwhile).
    """
    options = options or UploadOptions()
    progress = progress or NullProgress()
    followed = [
        r
        for r in results
        if r.upload_id is not None
        and r.status in (StudyStatus.VALIDATED, StudyStatus.ALREADY_DELIVERED)
    ]
    if not followed:
        return
    progress.waiting(followed)
    deadline = clock() + options.wait_timeout
    try:
        async with asyncio.TaskGroup() as group:
            for result in followed:
                group.create_task(
                    _follow(client, result, deadline, options, progress, sleep, clock)
                )
    except BaseExceptionGroup as errors:
        raise _most_serious(errors) from None


async def _follow(
    client: GatewayClient,
    result: StudyResult,
    deadline: float,
    options: UploadOptions,
    progress: ProgressListener,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
) -> None:
    assert result.upload_id is not None
    delay = options.wait_poll_min
    last: tuple[int, int, str] | None = None
    while True:
        asked = clock()
        delivery = await _poll(client, result, deadline, clock)
        floor = min(_MAX_POLL_FLOOR, (clock() - asked) * _POLL_DUTY_FACTOR)
        result.delivery = delivery
        if delivery.status is DeliveryStatus.WAITING and clock() >= deadline:
            delivery.status = DeliveryStatus.TIMED_OUT
            delivery.message = (
                f"still {delivery.upload_status or 'queued'} after {options.wait_timeout:g} s"
                " of waiting; the gateway goes on forwarding it"
            )
        if delivery.status is not DeliveryStatus.WAITING:
            progress.delivery_finished(result)
            return
        progress.delivery_progress(result)
        moved = delivery.progress != last
        last = delivery.progress
        delay = options.wait_poll_min if moved else min(delay * 1.5, options.wait_poll_max)
        await sleep(max(0.0, min(max(delay, floor), deadline - clock())))


async def _poll(
    client: GatewayClient, result: StudyResult, deadline: float, clock: Callable[[], float]
) -> Delivery:
    """The study's delivery now; UNREACHABLE (or CANCELLED) instead of an exception."""
    assert result.upload_id is not None
    previous = result.delivery
    try:
        async with asyncio.timeout(max(0.0, deadline - clock()) + _LAST_POLL_GRACE):
            # Poll the light view; the file list only once the PACS refused something, for
            # the names and reasons.
            upload = await client.get_upload(result.upload_id, files=False)
            if upload.status == "failed":
                upload = await client.get_upload(result.upload_id)
    except AuthenticationError:
        raise
    except ApiError as exc:
        if exc.code == "upload_not_found":
            gone = "the upload is gone from the gateway"
            return _stopped(previous, DeliveryStatus.CANCELLED, gone)
        return _stopped(previous, DeliveryStatus.UNREACHABLE, f"{exc.message} ({exc.code})")
    except (ClientError, TimeoutError) as exc:
        message = str(exc) or "the gateway did not answer"
        return _stopped(
            previous, DeliveryStatus.UNREACHABLE, f"{message}; the gateway goes on forwarding it"
        )
    if upload.instance_count is not None:
        result.instances = upload.instance_count
    return delivery_of(upload)


def _stopped(previous: Delivery | None, status: DeliveryStatus, message: str) -> Delivery:
    """The last known delivery state with a final ``status``."""
    delivery = previous if previous is not None else Delivery(status)
    delivery.status = status
    delivery.message = message
    return delivery


# -- a whole run --------------------------------------------------------------------------


async def run_upload(
    paths: Sequence[Path],
    client: GatewayClient,
    *,
    options: UploadOptions | None = None,
    progress: ProgressListener | None = None,
) -> RunSummary:
    """Discover, hash (logging in meanwhile) and upload every study under ``paths``, one after
    the other; then, with ``options.wait``, follow them until the PACS has them.

    Raises InputError (a missing path, an unsafe archive) before anything is sent. Other
    failures end up in the summary, whose ``exit_code`` the CLI returns.
    """
    options = options or UploadOptions()
    progress = progress or NullProgress()
    state_dir = ensure_state_dir(options.state_dir)
    summary = RunSummary()
    clock = time.perf_counter
    started = clock()
    with (
        extraction_workspace(state_dir) as workspace,
        HashCache(state_dir / "hashes.sqlite3") as cache,
    ):
        # Each instance is hashed as soon as discovery finds it: reading headers (Python) and
        # hashing (C, in threads) overlap instead of taking turns.
        hash_progress = _HashProgress(progress)
        hasher = Hasher(cache=cache, workers=options.hash_workers, on_bytes=hash_progress)
        try:
            discovery = await discover(
                paths,
                workspace=workspace,
                archive_limits=options.archive_limits,
                on_file=lambda file: hasher.add(hash_jobs([file])[0]),
                exclude=[state_dir],
            )
        except BaseException:
            hasher.cancel()
            raise
        summary.timings["discover_seconds"] = clock() - started
        summary.archives = len(discovery.archives)
        summary.skipped_files = {
            reason.value: names for reason, names in discovery.skipped_names().items()
        }
        summary.skipped = {reason: len(names) for reason, names in summary.skipped_files.items()}
        if not discovery.files:
            hasher.cancel()
            summary.error = "no DICOM instance found in the given paths"
            summary.error_kind = "input"
            progress.discovered(discovery, [])
            return summary
        hash_progress.start(sum(file.size for file in discovery.files))
        # Log in while the files are hashed: the token (and a connection) are ready when the
        # first study is. Its errors are raised where it is awaited, as before.
        login = asyncio.create_task(client.login())
        try:
            started = clock()
            try:
                studies = group_studies(discovery.files, await hasher.results())
            finally:
                summary.hash_cache_hits = cache.hits
                summary.timings["hash_seconds"] = clock() - started
            await _upload_studies(studies, discovery, client, login, options, progress, summary)
        finally:
            if not login.done():
                login.cancel()
            login.add_done_callback(_retrieve)
    return summary


class _HashProgress:
    """The hashing progress, counted from the first file discovered, shown once the total is
    known (when discovery ends)."""

    def __init__(self, progress: ProgressListener) -> None:
        self._progress = progress
        self._early = 0
        self._started = False

    def __call__(self, n_bytes: int) -> None:
        if self._started:
            self._progress.hashed(n_bytes)
        else:
            self._early += n_bytes

    def start(self, total_bytes: int) -> None:
        self._progress.hashing(total_bytes)
        self._started = True
        if self._early:
            self._progress.hashed(self._early)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark the exception of a task nobody awaits as seen."""
    if not task.cancelled():
        task.exception()


async def _upload_studies(
    studies: list[StudyPlan],
    discovery: Discovery,
    client: GatewayClient,
    login: asyncio.Task[None],
    options: UploadOptions,
    progress: ProgressListener,
    summary: RunSummary,
) -> None:
    clock = time.perf_counter
    progress.discovered(discovery, studies)
    results = [
        StudyResult(
            study_instance_uid=plan.study_instance_uid,
            status=StudyStatus.NOT_STARTED,
            number=plan.number,
            files=plan.file_count,
            total_bytes=plan.total_bytes,
            modalities=list(plan.modalities),
            study_date=plan.study_date,
        )
        for plan in studies
    ]
    summary.studies = results
    started = clock()
    try:
        await login
        for position, plan in enumerate(studies):
            result = await upload_study(client, plan, options=options, progress=progress)
            results[position] = result
            progress.study_finished(result)
            if result.abort is not None:
                summary.error, summary.error_kind = result.message, result.abort
                break
        summary.timings["upload_seconds"] = clock() - started
        if options.wait and summary.error_kind is None:
            started = clock()
            try:
                await wait_for_delivery(client, results, options=options, progress=progress)
            finally:
                summary.timings["wait_seconds"] = clock() - started
    except AuthenticationError as exc:
        summary.error, summary.error_kind = str(exc), "auth"
    except ServerUnreachableError as exc:
        summary.error, summary.error_kind = str(exc), "unreachable"
    summary.timings.setdefault("upload_seconds", clock() - started)
