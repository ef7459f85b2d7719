"""Early verification: a file that arrives in one chunk is verified while the rest of the study
is still uploading, so that `complete` has little left to do.

Most instances are smaller than a chunk (a CT slice is 0.5 MB, a chunk 8 MiB): once its only
chunk is durable and recorded, the whole file is in storage. Its SHA-256 and its DICOM check
(the same :class:`DicomValidator`) can run then, on one validation worker, while the network
is busy with the next chunks. `complete` takes the results and verifies only what is left: the
files of several chunks, and any file whose early check did not run (queue full, a restart, a
storage without local files, another replica). It is an optimisation only: the verdicts are the
same as `complete`'s own, and nothing is decided before `complete`.

A result is tied to the storage key of the chunk it read, which names the chunk's MD5: a chunk
stored is never replaced by other bytes (409), so the result holds as long as the upload does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from relaypacs.dicom import DicomRejected, DicomSummary, DicomValidator
from relaypacs.storage import ObjectStorage

logger = logging.getLogger(__name__)

_READ_BLOCK = 1 << 20


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
        self._queue: asyncio.Queue[tuple[uuid.UUID, int, str]] = asyncio.Queue(max_queued)
        self._max_results = max_results
        self._results: dict[uuid.UUID, dict[int, EarlyResult]] = {}
        self._result_count = 0
        self._open: set[uuid.UUID] = set()  # uploads whose early work is still wanted
        self._running: dict[uuid.UUID, int] = {}  # files being verified now, per upload
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def submit(self, upload_id: uuid.UUID, file_index: int, key: str) -> None:
        """Verify this single-chunk file when a worker is free (never waits: a full queue or
        a storage without local files leaves the file to `complete`)."""
        if self._closed or self._storage.local_path(key) is None:
            return
        try:
            self._queue.put_nowait((upload_id, file_index, key))
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
            upload_id, file_index, key = await self._queue.get()
            if upload_id not in self._open:
                continue
            self._running[upload_id] = self._running.get(upload_id, 0) + 1
            try:
                result = await self._verify(key)
            except Exception as exc:  # left to `complete`, which reports it properly
                logger.debug("early verification skipped a file: %s", type(exc).__name__)
                result = None
            finally:
                self._running[upload_id] -= 1
                if not self._running[upload_id]:
                    del self._running[upload_id]
            if result is not None and upload_id in self._open:
                self._keep(upload_id, file_index, result)
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

    async def _verify(self, key: str) -> EarlyResult | None:
        path = self._storage.local_path(key)
        if path is None:
            return None
        sha256 = await asyncio.to_thread(sha256_of_path, path)
        try:
            summary = await self._validator.inspect(path)
        except DicomRejected as exc:
            return EarlyResult(key, sha256, None, exc)
        return EarlyResult(key, sha256, summary, None)
