"""Early verification: a file that arrives in one chunk is verified while the rest of the study
is still uploading, so that `complete` has little left to do.

Most instances are smaller than a chunk (a CT slice is 0.5 MB, a chunk 8 MiB): once its only
chunk is durable and recorded, the whole file is in storage. Its SHA-256 and its DICOM check
(the same :class:`DicomValidator`) can run then, on one validation worker, while the network
is busy with the next chunks. `complete` takes the results and verifies only what is left: the
files of several chunks, and any file whose early check did not run (queue full, a restart, a
storage without local files, another replica). It is an optimisation only: the verdicts are the
same as `complete`'s own. With the pipelined relay (RELAYPACS_PIPELINE), a result whose
verdict is final on arrival also sends the instance to the PACS before `complete`
(`on_verified`, uploads.pipeline).

A result is tied to the storage key of the chunk it read, which names the chunk's SHA-256: a
chunk stored is never replaced by other bytes (409), so the result holds as long as the upload
does. The file's SHA-256 is the chunk's, which the server computed (or checked) from the very
bytes it stored: it is not read and hashed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from relaypacs.dicom import DicomRejected, DicomSummary, DicomValidator
from relaypacs.storage import ObjectStorage

logger = logging.getLogger(__name__)

_READ_BLOCK = 1 << 20
# Files per round trip to the validation worker: those queued while it worked on the last batch.
_BATCH = 32


@dataclass(frozen=True)
class EarlyResult:
    key: str  # the storage key of the chunk that was read
    sha256: str
    summary: DicomSummary | None
    rejection: DicomRejected | None


def sha256_of_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class EarlyVerifier:
    """A bounded queue of single-chunk files to verify, worked by `workers` tasks (one by
    default: one validation worker process, so early checks use at most one core and the
    validator's memory stays that of one worker while a study uploads)."""

    def __init__(
        self,
        storage: ObjectStorage,
        validator: DicomValidator,
        *,
        workers: int = 1,
        max_queued: int = 20_000,
        max_results: int = 20_000,
    ) -> None:
        self._storage = storage
        self._validator = validator
        self._workers = workers
        self._queue: asyncio.Queue[tuple[uuid.UUID, int, str, str]] = asyncio.Queue(max_queued)
        self._max_results = max_results
        self._results: dict[uuid.UUID, dict[int, EarlyResult]] = {}
        self._result_count = 0
        self._open: set[uuid.UUID] = set()  # uploads whose early work is still wanted
        self._running: dict[uuid.UUID, int] = {}  # files being verified now, per upload
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # Called with each upload's new results, by file index (the pipelined relay,
        # uploads.pipeline): set once at start.
        self.on_verified: (
            Callable[[uuid.UUID, list[tuple[int, EarlyResult]]], Awaitable[None]] | None
        ) = None

    def submit(self, upload_id: uuid.UUID, file_index: int, key: str, sha256: str) -> None:
        """Verify this single-chunk file when a worker is free (never waits: a full queue or
        a storage without local files leaves the file to `complete`). ``sha256``: that of
        the chunk's bytes as stored, computed or checked by the server."""
        if self._closed or self._storage.local_path(key) is None:
            return
        try:
            self._queue.put_nowait((upload_id, file_index, key, sha256))
        except asyncio.QueueFull:
            return
        self._open.add(upload_id)
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]

    async def take(self, upload_id: uuid.UUID) -> dict[int, EarlyResult]:
        """The results for this upload, by file index, once the files being verified now are
        done; files still queued are left to the caller (and dropped from the queue)."""
        self._open.discard(upload_id)
        async with self._changed:
            await self._changed.wait_for(lambda: not self._running.get(upload_id))
        results = self._results.pop(upload_id, {})
        self._result_count -= len(results)
        return results

    def ready(self, upload_id: uuid.UUID) -> int:
        """How many of this upload's files have a result now."""
        return len(self._results.get(upload_id, {}))

    def forget(self, upload_id: uuid.UUID) -> None:
        """The upload was cancelled: drop its results and queued work."""
        self._open.discard(upload_id)
        self._result_count -= len(self._results.pop(upload_id, {}))

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [item for item in batch if item[0] in self._open]
            if not batch:
                continue
            for upload_id, _, _, _ in batch:
                self._running[upload_id] = self._running.get(upload_id, 0) + 1
            try:
                try:
                    results = await self._verify([(key, sha256) for _, _, key, sha256 in batch])
                except Exception as exc:  # left to `complete`, which reports it properly
                    logger.debug(
                        "early verification skipped %d files: %s", len(batch), type(exc).__name__
                    )
                    results = [None] * len(batch)
                kept: dict[uuid.UUID, list[tuple[int, EarlyResult]]] = {}
                for (upload_id, file_index, _, _), result in zip(batch, results, strict=True):
                    if result is not None and upload_id in self._open:
                        self._keep(upload_id, file_index, result)
                        kept.setdefault(upload_id, []).append((file_index, result))
                # Before the files count as verified: `take` (complete) waits for this too.
                if self.on_verified is not None:
                    for upload_id, found in kept.items():
                        try:
                            await self.on_verified(upload_id, found)
                        except Exception as exc:  # pipelining is an optimisation: complete does it
                            logger.warning(
                                "pipelining %d files of upload %s failed: %s",
                                len(found),
                                upload_id,
                                type(exc).__name__,
                            )
            finally:
                for upload_id, _, _, _ in batch:
                    self._running[upload_id] -= 1
                    if not self._running[upload_id]:
                        del self._running[upload_id]
            async with self._changed:
                self._changed.notify_all()

    def _keep(self, upload_id: uuid.UUID, file_index: int, result: EarlyResult) -> None:
        # Bounded: the results of the oldest other uploads (abandoned ones, most likely) go
        # first; `complete` verifies again whatever has no result.
        while self._result_count >= self._max_results:
            oldest = next((u for u in self._results if u != upload_id), None)
            if oldest is None:
                return
            self._result_count -= len(self._results.pop(oldest))
        results = self._results.setdefault(upload_id, {})
        if file_index not in results:
            self._result_count += 1
        results[file_index] = result

    async def _verify(self, files: list[tuple[str, str]]) -> list[EarlyResult | None]:
        """Inspect the files (key, sha256) in one worker round trip; None for a file the
        batch has no verdict for (see DicomValidator.inspect_batch)."""
        paths = [self._storage.local_path(key) for key, _ in files]
        local = [
            (key, sha256, path)
            for (key, sha256), path in zip(files, paths, strict=True)
            if path is not None
        ]
        verdicts = await self._validator.inspect_batch([path for _, _, path in local])
        found: dict[str, EarlyResult] = {}
        for (key, sha256, _), verdict in zip(local, verdicts, strict=True):
            if isinstance(verdict, DicomSummary):
                found[key] = EarlyResult(key, sha256, verdict, None)
            elif isinstance(verdict, DicomRejected):
                found[key] = EarlyResult(key, sha256, None, verdict)
            # An OSError (the file is gone: the upload was cancelled) or no verdict: `complete`
        return [found.get(key) for key, _ in files]
