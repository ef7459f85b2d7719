"""Sending a study's chunks: each chunk read (and checked unchanged) off the event loop, sent
alone or, for whole small files, together in chunk batches, with up to ``parallel`` requests
in flight. The upload engine (``relaypacs.client.engine``) decides what to send and completes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from relaypacs.client.api import GatewayClient, RemoteUpload
from relaypacs.client.errors import (
    ApiError,
    AuthenticationError,
    ServerUnreachableError,
    most_serious,
)
from relaypacs.client.link import content_digest, content_digest_of
from relaypacs.client.manifest import FileProblem, StudyFile, StudyPlan
from relaypacs.client.results import ProgressListener, StudyResult, UploadOptions

__all__ = ["ChunkSender", "UploadLost"]


_TRANSIENT_CHUNK_CODES = frozenset({"content_md5_mismatch", "content_digest_mismatch"})


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


# Parts in one chunk batch: the gateway takes up to 256.
_BATCH_PARTS = 128


def _read_whole_files(files: Sequence[StudyFile]) -> list[bytes | None]:
    """Runs in a worker thread: each file's bytes (None: unreadable, sent alone to say why);
    _FileChangedError if one changed since it was hashed (its size or mtime)."""
    datas: list[bytes | None] = []
    for file in files:
        try:
            data, _ = _read_chunk(file, 0, file.size)
        except OSError:
            datas.append(None)
            continue
        datas.append(data)
    return datas


def _chunk_length(size: int, chunk_size: int, chunk_index: int) -> int:
    return max(0, min(chunk_size, size - chunk_index * chunk_size))


class _StopSending(Exception):
    """The upload no longer takes chunks (completed or cancelled elsewhere)."""


class UploadLost(Exception):
    """The upload disappeared on the server (cancelled or cleaned up)."""


@dataclass(slots=True)
class ChunkSender:
    """One study's upload, as far as sending its chunks goes: its files by the server's
    indexes, the requests to send the missing chunks in, and what was sent or refused."""

    client: GatewayClient
    plan: StudyPlan
    options: UploadOptions
    progress: ProgressListener
    result: StudyResult
    upload: RemoteUpload | None = None
    by_index: dict[int, StudyFile] = field(default_factory=dict)
    failed_files: set[int] = field(default_factory=set)
    # Whole small files go in chunk batches until the gateway says it has none.
    batches: bool = True

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

    def plan_requests(self, chunks: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """The requests to send ``chunks`` in: a chunk alone, or several whole small files
        together (a chunk batch) of up to ``batch_bytes`` (and the upload's chunk size, the
        most a batch may carry), in file order."""
        assert self.upload is not None
        chunk_size = self.upload.chunk_size
        budget = min(self.options.batch_bytes, chunk_size)
        small = min(self.options.batch_file_max, budget)
        requests: list[list[tuple[int, int]]] = []
        batch: list[tuple[int, int]] = []
        batch_bytes = 0
        for file_index, chunk_index in sorted(chunks):
            size = self.by_index[file_index].size
            if (
                not self.batches
                or chunk_index != 0
                or size > small
                or size > chunk_size
                or self.options.batch_bytes <= 0
            ):
                requests.append([(file_index, chunk_index)])
                continue
            if batch and (batch_bytes + size > budget or len(batch) >= _BATCH_PARTS):
                requests.append(batch)
                batch, batch_bytes = [], 0
            batch.append((file_index, chunk_index))
            batch_bytes += size
        if batch:
            requests.append(batch)
        return requests

    async def send_chunks(self, chunks: Sequence[tuple[int, int]]) -> None:
        """Send ``chunks`` with up to ``parallel`` requests in flight: whole small files in
        chunk batches while the gateway takes them, the others one by one."""
        assert self.upload is not None
        upload = self.upload
        pending: Iterator[list[tuple[int, int]]] = iter(self.plan_requests(chunks))
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
                        raise UploadLost from exc
                    self.fail(file_index, exc.code, f"chunk {chunk_index}: {exc.message}")
                    return
                break
            self.result.chunks_sent += 1
            self.result.bytes_sent += length
            if receipt.already_stored:
                self.result.chunks_already_stored += 1
            self.progress.sent(length)

        async def send_batch(items: list[tuple[int, int]]) -> None:
            """Several whole files in one request; a part refused for its digest goes again
            alone (send_one: with its bytes' own digest), one the gateway cannot take in a
            batch (an older gateway) too."""
            files = [self.by_index[f] for f, _ in items]
            try:
                datas = await asyncio.to_thread(_read_whole_files, files)
            except _FileChangedError:
                for f, c in items:
                    await send_one(f, c)  # finds which one changed, and says so
                return
            parts: list[tuple[int, int, bytes, str]] = []
            for (file_index, chunk_index), data in zip(items, datas, strict=True):
                if data is None:
                    await send_one(file_index, chunk_index)  # unreadable: alone, to say why
                else:
                    parts.append((file_index, chunk_index, data, self.by_index[file_index].sha256))
            if not parts:
                return
            try:
                receipts = await self.client.put_chunk_batch(upload.id, parts)
            except ApiError as exc:
                if exc.code == "upload_not_writable":
                    raise _StopSending from exc
                if exc.code == "upload_not_found":
                    raise UploadLost from exc
                for f, c, _, _ in parts:
                    self.fail(f, exc.code, f"chunk {c}: {exc.message}")
                return
            if receipts is None:
                self.batches = False
                for f, c, _, _ in parts:
                    await send_one(f, c)
                return
            self.result.batches_sent += 1
            again: list[tuple[int, int]] = []
            for receipt, (f, c, data, _) in zip(receipts, parts, strict=True):
                if receipt.status in ("stored", "already_stored"):
                    self.result.chunks_sent += 1
                    self.result.bytes_sent += len(data)
                    if receipt.status == "already_stored":
                        self.result.chunks_already_stored += 1
                    self.progress.sent(len(data))
                elif receipt.code in _TRANSIENT_CHUNK_CODES:
                    again.append((f, c))
                else:
                    code = receipt.code or "chunk_refused"
                    self.fail(f, code, f"chunk {c}: {receipt.message or code}")
            for f, c in again:
                await send_one(f, c)

        async def worker() -> None:
            while not stop.is_set():
                request = next(pending, None)
                if request is None:
                    return
                request = [item for item in request if item[0] not in self.failed_files]
                if not request:
                    continue
                try:
                    if len(request) == 1 and not self._batchable(request[0]):
                        await send_one(*request[0])
                    elif self.batches:
                        await send_batch(request)
                    else:
                        for item in request:
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

    def _batchable(self, item: tuple[int, int]) -> bool:
        """Whether this chunk went in a batch of its own (the last of a study, say)."""
        assert self.upload is not None
        size = self.by_index[item[0]].size
        small = min(self.options.batch_file_max, self.options.batch_bytes, self.upload.chunk_size)
        return self.batches and self.options.batch_bytes > 0 and item[1] == 0 and size <= small

    def fail(self, file_index: int, code: str, message: str) -> None:
        if file_index in self.failed_files:
            return
        self.failed_files.add(file_index)
        self.result.errors.append(FileProblem(self.by_index[file_index].name, code, message))


# When several workers fail at once, the error that says most about what to do next.
_SERIOUSNESS: tuple[type[BaseException], ...] = (
    AuthenticationError,
    ServerUnreachableError,
    UploadLost,
)


def _most_serious(group: BaseExceptionGroup[BaseException]) -> BaseException:
    return most_serious(group, _SERIOUSNESS)
