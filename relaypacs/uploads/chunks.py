"""Storing a chunk: the checks made before its body is read (from cached, immutable facts), its
digests, its durable object, then its row, recorded with others in one transaction."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from relaypacs.auth.models import User
from relaypacs.db import Database, read_in_one_call
from relaypacs.storage import ChecksumMismatch, ObjectStorage, StorageError
from relaypacs.telemetry.metrics import CHUNK_BYTES, CHUNKS
from relaypacs.uploads import repository
from relaypacs.uploads.bodies import BodyBudget
from relaypacs.uploads.early import EarlyVerifier
from relaypacs.uploads.errors import (
    ChunkConflict,
    ChunkOutOfRange,
    ChunkSizeMismatch,
    ChunkTooLarge,
    ContentDigestMismatch,
    ContentLengthRequired,
    ContentMd5Mismatch,
    UploadNotFound,
    UploadNotWritable,
)
from relaypacs.uploads.models import UploadStatus
from relaypacs.uploads.repository import UploadFacts, chunk_key
from relaypacs.uploads.repository.chunk_rows import ChunkRow, ChunkRowWriter, RecordedBatch
from relaypacs.uploads.schemas import ChunkStored


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def expected_chunk_size(file_size: int, chunk_size: int, chunk_index: int) -> int:
    return min(chunk_size, file_size - chunk_index * chunk_size)


@dataclass(frozen=True)
class ChunkDigests:
    """The checksums a client declared for a chunk (hex), at least one of them."""

    sha256: str | None  # Content-Digest: sha-256=:...:
    md5: str | None  # Content-MD5


class UploadFactsCache:
    """A small in-process cache of UploadFacts, so that a chunk costs no database read for them."""

    def __init__(self, capacity: int = 512) -> None:
        self._capacity = capacity
        self._items: OrderedDict[uuid.UUID, UploadFacts] = OrderedDict()

    async def get(self, db: Database, upload_id: uuid.UUID) -> UploadFacts | None:
        """The facts of an upload; a miss is one short read (read_in_one_call), a hit touches
        no database and no session."""
        facts = self._items.get(upload_id)
        if facts is not None:
            self._items.move_to_end(upload_id)
            return facts
        facts = await read_in_one_call(
            db, lambda session: repository.upload_facts(session, upload_id)
        )
        if facts is None:
            return None
        self._items[upload_id] = facts
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)
        return facts


async def uploader_facts(
    db: Database,
    facts_cache: UploadFactsCache,
    *,
    user: User,
    upload_id: uuid.UUID,
    content_length: int | None,
) -> tuple[UploadFacts, int]:
    """The facts of an upload this user may write chunks to (only its uploader: 404 for anyone
    else), and the request's declared length (411 without one): the checks a chunk PUT and a
    chunk batch both make first."""
    facts = await facts_cache.get(db, upload_id)
    if facts is None:
        raise UploadNotFound().denying("upload", upload_id, reason="missing")
    if facts.user_id != user.id:  # only the uploader writes chunks
        raise UploadNotFound().denying("upload", upload_id)
    if content_length is None:
        raise ContentLengthRequired()
    return facts, content_length


@dataclass(frozen=True)
class ChunkTarget:
    upload_id: uuid.UUID
    file_index: int
    chunk_index: int
    expected_size: int
    whole_file: bool = False  # the file's only chunk
    needs_md5: bool = False  # UploadFacts.legacy_chunks


async def prepare_chunk(
    db: Database,
    facts_cache: UploadFactsCache,
    *,
    user: User,
    upload_id: uuid.UUID,
    file_index: int,
    chunk_index: int,
    content_length: int | None,
) -> ChunkTarget:
    """Every check that can be made before the body is read (from cached, immutable facts)."""
    facts, content_length = await uploader_facts(
        db, facts_cache, user=user, upload_id=upload_id, content_length=content_length
    )
    if content_length > facts.chunk_size:
        raise ChunkTooLarge(
            f"A chunk is at most {facts.chunk_size} bytes; this one declares {content_length}."
        )
    if not 0 <= file_index < len(facts.file_sizes):
        raise ChunkOutOfRange()
    file_size = facts.file_sizes[file_index]
    if not 0 <= chunk_index < chunk_count(file_size, facts.chunk_size):
        raise ChunkOutOfRange()
    expected = expected_chunk_size(file_size, facts.chunk_size, chunk_index)
    if content_length != expected:
        raise ChunkSizeMismatch(
            f"Chunk {chunk_index} of file {file_index} must be exactly {expected} bytes; "
            f"this one is {content_length}."
        )
    return ChunkTarget(
        upload_id,
        file_index,
        chunk_index,
        expected,
        whole_file=expected == file_size,
        needs_md5=facts.legacy_chunks,
    )


class ChunkOutcome(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already_stored"
    # the same bytes, recorded before migration 0004: under the MD5-named key, not ours
    ALREADY_STORED_LEGACY = "already_stored_legacy"
    CONFLICT = "conflict"
    NOT_WRITABLE = "not_writable"
    CANCELLED = "cancelled"


def outcomes(batch: list[ChunkRow], recorded: RecordedBatch) -> list[ChunkOutcome]:
    """What became of each chunk of a batch: its upload's status, whether its row was
    inserted now, and the digests of the rows that were there already."""
    inserted, stored = set(recorded.inserted), dict(recorded.stored)
    found = []
    for row in batch:
        status = recorded.statuses.get(row.upload_id)
        if status in (UploadStatus.CANCELLED, UploadStatus.EXPIRED):  # no chunk is kept
            found.append(ChunkOutcome.CANCELLED)
        elif status != UploadStatus.PENDING:
            found.append(ChunkOutcome.NOT_WRITABLE)
        elif row.key in inserted:
            inserted.discard(row.key)  # the same chunk twice in one batch: one stored it
            stored[row.key] = (row.sha256, row.md5)
            found.append(ChunkOutcome.STORED)
        elif row.key in stored and _same_bytes(row, stored[row.key]):
            legacy = stored[row.key][0] is None
            found.append(
                ChunkOutcome.ALREADY_STORED_LEGACY if legacy else ChunkOutcome.ALREADY_STORED
            )
        else:
            found.append(ChunkOutcome.CONFLICT)
    return found


def _same_bytes(row: ChunkRow, stored: tuple[str | None, str | None]) -> bool:
    """Whether a stored row (sha256, md5) holds these bytes: by SHA-256, or by MD5 for a row
    from before migration 0004 (whose upload's chunks all carry an MD5)."""
    sha256, md5 = stored
    if sha256 is not None:
        return sha256 == row.sha256
    return md5 is not None and md5 == row.md5


class ChunkRecorder:
    """Records durable chunks in the database, many per transaction (group commit).

    Chunks arrive in parallel; each would otherwise pay a whole write transaction (on SQLite:
    the single writer's turn and an fsync of the log). Requests queue their row and wait; one
    task writes everything queued in one transaction and answers each request. A row is
    answered only after its transaction committed, so an acknowledged chunk is durable in the
    database as well as in storage. The transaction itself is the repository's
    (`repository.chunk_rows.chunk_row_writer`: on SQLite, one thread call on the driver's
    connection)."""

    def __init__(self, writer: ChunkRowWriter, *, max_batch: int = 256) -> None:
        self._writer = writer
        self._max_batch = max_batch
        self._queue: list[tuple[ChunkRow, asyncio.Future[ChunkOutcome]]] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, row: ChunkRow) -> ChunkOutcome:
        future: asyncio.Future[ChunkOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append((row, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        # shield: a client that disconnects does not cancel the batch others wait for
        return await asyncio.shield(future)

    async def record_many(self, rows: list[ChunkRow]) -> list[ChunkOutcome]:
        """Several rows (a chunk batch), queued together: in one transaction unless the queue
        holds more than ``max_batch``."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[ChunkOutcome]] = []
        for row in rows:
            future: asyncio.Future[ChunkOutcome] = loop.create_future()
            self._queue.append((row, future))
            futures.append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return list(await asyncio.shield(asyncio.gather(*futures)))

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            rows = [row for row, _ in batch]
            try:
                found = outcomes(rows, await self._writer.write(rows))
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), outcome in zip(batch, found, strict=True):
                if not future.done():
                    future.set_result(outcome)


_OUTCOME_LABELS = {
    ChunkOutcome.STORED: "stored",
    ChunkOutcome.ALREADY_STORED: "already_stored",
    ChunkOutcome.ALREADY_STORED_LEGACY: "already_stored",
    ChunkOutcome.CONFLICT: "conflict",
    ChunkOutcome.NOT_WRITABLE: "not_writable",
    ChunkOutcome.CANCELLED: "not_writable",
}


def count_chunk(outcome: str, size: int) -> None:
    """One chunk in the metrics (children bound at import: two dict reads and two adds)."""
    CHUNKS[outcome].inc()
    CHUNK_BYTES[outcome].inc(size)


async def store_chunk(
    recorder: ChunkRecorder,
    storage: ObjectStorage,
    *,
    target: ChunkTarget,
    declared: ChunkDigests,
    data: bytes,
    early: EarlyVerifier | None = None,
) -> ChunkStored:
    """Verify the bytes, make them durable, then record the chunk. Idempotent. A file's only
    chunk, newly stored, goes to the early verifier (see relaypacs.uploads.early) with its
    SHA-256, which is then the file's."""
    if len(data) != target.expected_size:
        count_chunk("rejected", len(data))
        raise ChunkSizeMismatch(
            f"The body has {len(data)} bytes; chunk {target.chunk_index} of file "
            f"{target.file_index} must have exactly {target.expected_size}."
        )
    # The object is named by the chunk's SHA-256. The same chunk again rewrites identical
    # bytes under the same key (atomically), which is harmless; the database then says it was
    # already stored. A declared SHA-256 is checked by the storage in the same step as the
    # write, which stores nothing if it differs; with Content-MD5 only, the server hashes
    # first to know the name.
    md5 = declared.md5
    size = len(data)
    try:
        if declared.sha256 is not None and (md5 is not None or not target.needs_md5):
            sha256 = declared.sha256
            key = chunk_key(target.upload_id, target.file_index, target.chunk_index, sha256)
            await storage.put(key, data, md5=md5, sha256=sha256)
        else:
            sha256, md5 = await asyncio.to_thread(_digests, data, declared, target.needs_md5)
            key = chunk_key(target.upload_id, target.file_index, target.chunk_index, sha256)
            await storage.put(key, data)
    except ChecksumMismatch as exc:
        count_chunk("rejected", size)
        mismatch = ContentDigestMismatch if exc.algorithm == "sha256" else ContentMd5Mismatch
        raise mismatch() from None
    except StorageError:
        count_chunk("failed", size)
        raise
    try:
        outcome = await recorder.record(
            ChunkRow(target.upload_id, target.file_index, target.chunk_index, size, sha256, md5)
        )
    except Exception:
        count_chunk("failed", size)
        raise
    count_chunk(_OUTCOME_LABELS[outcome], size)
    if outcome == ChunkOutcome.ALREADY_STORED_LEGACY:
        await storage.delete(key)  # ours: the recorded copy is under its MD5-named key
    if outcome == ChunkOutcome.CONFLICT:
        await storage.delete(key)  # ours: the recorded chunk has another digest, hence another key
        raise ChunkConflict()
    if outcome == ChunkOutcome.CANCELLED:
        await storage.delete(key)  # a cancelled or expired upload has no recorded chunks left
        raise UploadNotWritable("This upload was cancelled or has expired.")
    if outcome == ChunkOutcome.NOT_WRITABLE:
        # Never delete here: the key may be a recorded chunk of a completed upload.
        raise UploadNotWritable()
    if early is not None and target.whole_file and outcome == ChunkOutcome.STORED:
        early.submit(target.upload_id, target.file_index, key, sha256)
    return ChunkStored(
        file_index=target.file_index,
        chunk_index=target.chunk_index,
        size=len(data),
        already_stored=outcome != ChunkOutcome.STORED,
    )


def _digests(data: bytes, declared: ChunkDigests, want_md5: bool) -> tuple[str, str | None]:
    """The chunk's SHA-256, and its MD5 when declared or wanted (each computed once), checked
    against the declared ones (ChecksumMismatch). Blocking: call it in a thread."""
    sha256 = hashlib.sha256(data).hexdigest()
    if declared.sha256 is not None and sha256 != declared.sha256:
        raise ChecksumMismatch("sha256")
    md5 = None
    if declared.md5 is not None or want_md5:
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if declared.md5 is not None and md5 != declared.md5:
            raise ChecksumMismatch("md5")
    return sha256, md5


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkIntake:
    """What the chunk PUT uses besides the storage, built once at start and held by the app's
    state as one part: the hot path reaches it without dependency resolution. (The storage is
    the app's, `AppState.storage`, read on each request like every route's.)"""

    db: Database
    facts: UploadFactsCache
    recorder: ChunkRecorder
    early: EarlyVerifier | None
    bodies: BodyBudget  # chunk bodies held in memory at once, and each user's share
    body_idle_seconds: float  # a body of which nothing arrives for this long is given up
    batch_max_bytes: int = 8 * 1024 * 1024 + 64 * 1024  # a chunk batch's body, header included
