"""The rules of study uploads: start or resume, store chunks durably, verify, list, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import functools
import hashlib
import sqlite3
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from relaypacs.audit.service import record_event
from relaypacs.auth.models import Role, User
from relaypacs.db import Database, column_processor, read_in_one_call, sqlite_write_lock, utcnow
from relaypacs.forwarding import service as forwarding
from relaypacs.storage import ChecksumMismatch, ObjectStorage
from relaypacs.uploads.early import EarlyVerifier
from relaypacs.uploads.errors import (
    ChunkConflict,
    ChunkOutOfRange,
    ChunkSizeMismatch,
    ChunkTooLarge,
    ContentDigestMismatch,
    ContentLengthRequired,
    ContentMd5Mismatch,
    DeliveredUploadNotCancellable,
    InvalidManifest,
    StudyAlreadyDelivered,
    UploadIncomplete,
    UploadNotCancellable,
    UploadNotFound,
    UploadNotRetryable,
    UploadNotWritable,
    UploadRejected,
)
from relaypacs.uploads.models import (
    ACCEPTED_STATUSES,
    IN_PROGRESS_STATUSES,
    FileStatus,
    ForwardStatus,
    Upload,
    UploadChunk,
    UploadFile,
    UploadStatus,
)
from relaypacs.uploads.schemas import (
    ChunkStored,
    FileError,
    ForwardingRead,
    StudyMetadata,
    UploadCreate,
    UploadFileRead,
    UploadRead,
    UploadSummary,
)
from relaypacs.uploads.verify import FileToVerify, FileVerdict, StudyVerifier, is_instance

# --- helpers --------------------------------------------------------------------------------


def study_hash(sha256s: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def expected_chunk_size(file_size: int, chunk_size: int, chunk_index: int) -> int:
    return min(chunk_size, file_size - chunk_index * chunk_size)


async def recorded_chunk_keys(
    session: AsyncSession, upload_id: uuid.UUID
) -> dict[int, dict[int, str]]:
    """The object key of every recorded chunk of the upload, by file index, then by chunk
    index in order. A chunk is named by its SHA-256, or by its MD5 for rows from before
    migration 0004 (which have no SHA-256)."""
    rows = await session.execute(
        select(UploadChunk.file_index, UploadChunk.chunk_index, UploadChunk.sha256, UploadChunk.md5)
        .where(UploadChunk.upload_id == upload_id)
        .order_by(UploadChunk.file_index, UploadChunk.chunk_index)
    )
    keys: dict[int, dict[int, str]] = defaultdict(dict)
    for file_index, chunk_index, sha256, md5 in rows:
        digest = sha256 or md5
        if digest is None:  # the schema's rows always have one of them
            raise ValueError("a chunk row with neither SHA-256 nor MD5")
        keys[file_index][chunk_index] = chunk_key(upload_id, file_index, chunk_index, digest)
    return keys


def chunk_key(upload_id: uuid.UUID, file_index: int, chunk_index: int, digest: str) -> str:
    # The digest (hex SHA-256; MD5 for rows from before migration 0004) is part of the key:
    # two racing writers of different bytes never overwrite each other's object; the database
    # row decides which one is the chunk. One flat directory per upload: a directory per file
    # would cost a mkdir and a parent fsync for every file.
    return f"{upload_prefix(upload_id)}{file_index}-{chunk_index}-{digest}"


def upload_prefix(upload_id: uuid.UUID) -> str:
    return f"uploads/{upload_id}/"


@dataclass(frozen=True)
class ChunkDigests:
    """The checksums a client declared for a chunk (hex), at least one of them."""

    sha256: str | None  # Content-Digest: sha-256=:...:
    md5: str | None  # Content-MD5


def can_see(user: User, upload: Upload) -> bool:
    return upload.user_id == user.id or user.role == Role.ADMIN


def summary_of(upload: Upload, received_bytes: int) -> UploadSummary:
    return UploadSummary(
        id=upload.id,
        status=upload.status,
        study_instance_uid=upload.study_instance_uid,
        study_hash=upload.study_hash,
        chunk_size=upload.chunk_size,
        file_count=upload.file_count,
        instance_count=upload.instance_count,
        total_bytes=upload.total_bytes,
        received_bytes=received_bytes,
        metadata=StudyMetadata.model_validate(upload.study_metadata),
        created_at=upload.created_at,
        updated_at=upload.updated_at,
        completed_at=upload.completed_at,
    )


# --- reading --------------------------------------------------------------------------------


async def get_upload(
    session: AsyncSession, *, upload_id: uuid.UUID, user: User, write: bool = False
) -> Upload:
    """The upload if this user may see it (`write`: change it, the uploader only); otherwise
    the same 404 as a missing one. Both are audited as denied accesses."""
    upload = await session.get(Upload, upload_id)
    if upload is None:
        raise UploadNotFound().denying("upload", upload_id, reason="missing")
    if not (upload.user_id == user.id if write else can_see(user, upload)):
        raise UploadNotFound().denying("upload", upload_id, upload.study_instance_uid)
    return upload


async def _stored_chunks(session: AsyncSession, upload_id: uuid.UUID) -> dict[int, set[int]]:
    rows = await session.execute(
        select(UploadChunk.file_index, UploadChunk.chunk_index).where(
            UploadChunk.upload_id == upload_id
        )
    )
    stored: dict[int, set[int]] = defaultdict(set)
    for file_index, chunk_index in rows:
        stored[file_index].add(chunk_index)
    return stored


async def _received_bytes(session: AsyncSession, upload_id: uuid.UUID) -> int:
    return await session.run_sync(_received_bytes_sync, upload_id)


def _received_bytes_sync(session: Session, upload_id: uuid.UUID) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(UploadChunk.size), 0)).where(
            UploadChunk.upload_id == upload_id
        )
    )
    return int(total or 0)


_FILE_VIEW_COLUMNS = (
    UploadFile.index,
    UploadFile.name,
    UploadFile.size,
    UploadFile.sha256,
    UploadFile.chunk_count,
    UploadFile.status,
    UploadFile.kind,
    UploadFile.preamble,
    UploadFile.sop_instance_uid,
    UploadFile.error_code,
    UploadFile.error_message,
    UploadFile.forward_status,
    UploadFile.forward_error,
)


async def read_upload(
    session: AsyncSession, upload: Upload, *, with_files: bool = True
) -> UploadRead:
    """The upload as the API shows it; without its files (`with_files=False`) it costs a few
    aggregate queries whatever the study's size: the view to poll."""
    if not with_files:
        return await session.run_sync(_light_view, upload)
    # Columns, not ORM objects: thousands of files for a large study.
    rows = await session.execute(
        select(*_FILE_VIEW_COLUMNS)
        .where(UploadFile.upload_id == upload.id)
        .order_by(UploadFile.index)
    )
    stored = await _stored_chunks(session, upload.id)
    received = await _received_bytes(session, upload.id)
    file_reads = [
        UploadFileRead(
            index=index,
            name=name,
            size=size,
            sha256=sha256,
            chunk_count=count,
            missing_chunks=[i for i in range(count) if i not in stored.get(index, ())],
            status=status,
            kind=kind,
            preamble=preamble,
            sop_instance_uid=sop_instance_uid,
            error=FileError(code=error_code, message=error_message or "") if error_code else None,
            forward_status=forward_status,
            forward_error=forward_error,
        )
        for (
            index,
            name,
            size,
            sha256,
            count,
            status,
            kind,
            preamble,
            sop_instance_uid,
            error_code,
            error_message,
            forward_status,
            forward_error,
        ) in rows
    ]
    return UploadRead(
        **summary_of(upload, received).model_dump(),
        files=file_reads,
        forwarding=await _forwarding_async(session, upload),
    )


async def read_upload_light(
    db: Database, *, upload_id: uuid.UUID, user: User
) -> tuple[UploadRead, Upload]:
    """The upload without its files (the view `upload --wait` polls) and its (detached) row, if
    this user may see it, in one read (see read_in_one_call); otherwise the 404 of get_upload."""

    def read(session: Session) -> tuple[UploadRead, Upload]:
        upload = session.get(Upload, upload_id)
        if upload is None:
            raise UploadNotFound().denying("upload", upload_id, reason="missing")
        if not can_see(user, upload):
            raise UploadNotFound().denying("upload", upload_id, upload.study_instance_uid)
        return _light_view(session, upload), upload

    return await read_in_one_call(db, read)


def _light_view(session: Session, upload: Upload) -> UploadRead:
    return UploadRead(
        **summary_of(upload, _received_bytes_sync(session, upload.id)).model_dump(),
        files=None,
        forwarding=_forwarding(session, upload),
    )


async def _forwarding_async(session: AsyncSession, upload: Upload) -> ForwardingRead | None:
    return await session.run_sync(_forwarding, upload)


def _forwarding(session: Session, upload: Upload) -> ForwardingRead | None:
    job = forwarding.job_summary(session, upload.id)
    if job is None:
        return None
    rows = session.execute(
        select(UploadFile.forward_status, func.count())
        .where(UploadFile.upload_id == upload.id, UploadFile.forward_status.is_not(None))
        .group_by(UploadFile.forward_status)
    )
    counts = {status: int(n) for status, n in rows}
    confirmed = counts.get(ForwardStatus.CONFIRMED, 0)
    return ForwardingRead(
        target=job.target,
        status=job.status.value,
        instances=sum(counts.values()),
        sent=confirmed + counts.get(ForwardStatus.SENT, 0),
        confirmed=confirmed,
        failed=counts.get(ForwardStatus.FAILED, 0),
        attempts=job.attempts,
        next_attempt_at=job.next_attempt_at,
        last_error=job.last_error,
        delivered_at=upload.delivered_at,
    )


async def list_uploads(
    session: AsyncSession,
    *,
    user: User,
    status: UploadStatus | None,
    limit: int,
    offset: int,
) -> tuple[list[UploadSummary], int]:
    query = select(Upload).where(Upload.user_id == user.id)
    if status is not None:
        query = query.where(Upload.status == status)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    uploads = (
        await session.scalars(
            query.order_by(Upload.created_at.desc(), Upload.id).limit(limit).offset(offset)
        )
    ).all()
    received: dict[uuid.UUID, int] = {}
    if uploads:
        rows = await session.execute(
            select(UploadChunk.upload_id, func.sum(UploadChunk.size))
            .where(UploadChunk.upload_id.in_([u.id for u in uploads]))
            .group_by(UploadChunk.upload_id)
        )
        received = {upload_id: int(size) for upload_id, size in rows}
    return [summary_of(u, received.get(u.id, 0)) for u in uploads], int(total or 0)


# --- starting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadLimits:
    chunk_size: int
    max_files: int
    max_file_size: int


async def _serialise_starts(session: AsyncSession, user_id: uuid.UUID, digest: str) -> None:
    """Two inits of the same study by the same user at once must not both create an upload.
    SQLite runs writers one at a time already; on PostgreSQL (read committed) neither would see
    the other's row, so they take turns on an advisory lock of the transaction."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return
    key = hashlib.blake2b(f"{user_id}:{digest}".encode(), digest_size=8).digest()
    await session.execute(
        select(func.pg_advisory_xact_lock(int.from_bytes(key, "big", signed=True)))
    )


async def start_upload(
    session: AsyncSession,
    *,
    user: User,
    body: UploadCreate,
    limits: UploadLimits,
    client_ip: str | None,
) -> tuple[Upload, bool]:
    """Create the upload, or return the user's upload of the same study still in progress.

    Returns (upload, created).
    """
    if len(body.files) > limits.max_files:
        raise InvalidManifest(f"An upload may list at most {limits.max_files} files.")
    too_big = [i for i, f in enumerate(body.files) if f.size > limits.max_file_size]
    if too_big:
        raise InvalidManifest(
            f"File {too_big[0]} is larger than the limit of {limits.max_file_size} bytes."
        )
    hashes = [f.sha256 for f in body.files]
    if len(set(hashes)) != len(hashes):
        raise InvalidManifest("The manifest lists the same file content more than once.")
    digest = study_hash(hashes)
    await _serialise_starts(session, user.id, digest)

    accepted = await session.scalar(
        select(Upload)
        .where(Upload.study_hash == digest, Upload.status.in_(ACCEPTED_STATUSES))
        .order_by(Upload.user_id != user.id, Upload.created_at)
        .limit(1)
    )
    if accepted is not None:
        details: dict[str, Any] = {"status": accepted.status.value}
        if can_see(user, accepted):
            received = await _received_bytes(session, accepted.id)
            details["upload"] = summary_of(accepted, received).model_dump(mode="json")
        raise StudyAlreadyDelivered(details=details)

    existing = await session.scalar(
        select(Upload)
        .where(
            Upload.user_id == user.id,
            Upload.study_hash == digest,
            Upload.status.in_(IN_PROGRESS_STATUSES),
        )
        .order_by(Upload.created_at)
        .limit(1)
    )
    if existing is not None:
        await record_event(
            session,
            action="upload.resume",
            actor_id=user.id,
            actor_role=user.role.value,
            object_type="upload",
            object_id=existing.id,
            study_instance_uid=existing.study_instance_uid,
            client_ip=client_ip,
        )
        return existing, False

    upload = Upload(
        id=uuid.uuid4(),
        user_id=user.id,
        study_instance_uid=body.study_instance_uid,
        study_hash=digest,
        status=UploadStatus.PENDING,
        study_metadata=body.metadata.model_dump(exclude_none=True),
        chunk_size=limits.chunk_size,
        file_count=len(body.files),
        total_bytes=sum(f.size for f in body.files),
    )
    session.add(upload)
    await session.flush()
    await session.execute(
        insert(UploadFile),
        [
            {
                "upload_id": upload.id,
                "index": index,
                "name": f.name,
                "size": f.size,
                "sha256": f.sha256,
                "chunk_count": chunk_count(f.size, limits.chunk_size),
                "status": FileStatus.PENDING,
            }
            for index, f in enumerate(body.files)
        ],
    )
    await record_event(
        session,
        action="upload.start",
        actor_id=user.id,
        actor_role=user.role.value,
        object_type="upload",
        object_id=upload.id,
        study_instance_uid=upload.study_instance_uid,
        client_ip=client_ip,
        details={"files": upload.file_count, "bytes": upload.total_bytes},
    )
    return upload, True


# --- chunks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadFacts:
    """What never changes about an upload once created: checked before a chunk's body is read."""

    user_id: uuid.UUID
    chunk_size: int
    file_sizes: tuple[int, ...]
    # Some chunk rows are from before migration 0004 (no SHA-256): compared by MD5, so every
    # chunk of this upload needs its MD5. Never becomes true later: new rows have a SHA-256.
    legacy_chunks: bool = False


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

        def read(session: Session) -> UploadFacts | None:
            row = session.execute(
                select(Upload.user_id, Upload.chunk_size).where(Upload.id == upload_id)
            ).one_or_none()
            if row is None:
                return None
            sizes = session.scalars(
                select(UploadFile.size)
                .where(UploadFile.upload_id == upload_id)
                .order_by(UploadFile.index)
            )
            legacy = session.scalar(
                select(UploadChunk.chunk_index)
                .where(UploadChunk.upload_id == upload_id, UploadChunk.sha256.is_(None))
                .limit(1)
            )
            return UploadFacts(
                user_id=row.user_id,
                chunk_size=row.chunk_size,
                file_sizes=tuple(sizes),
                legacy_chunks=legacy is not None,
            )

        facts = await read_in_one_call(db, read)
        if facts is None:
            return None
        self._items[upload_id] = facts
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)
        return facts


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
    facts = await facts_cache.get(db, upload_id)
    if facts is None:
        raise UploadNotFound().denying("upload", upload_id, reason="missing")
    if facts.user_id != user.id:  # only the uploader writes chunks
        raise UploadNotFound().denying("upload", upload_id)
    if content_length is None:
        raise ContentLengthRequired()
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


@dataclass(frozen=True)
class _ChunkRecord:
    target: ChunkTarget
    size: int
    sha256: str
    md5: str | None

    def same_as(self, stored: tuple[str | None, str | None]) -> bool:
        """Whether a stored row (sha256, md5) holds these bytes: by SHA-256, or by MD5 for a
        row from before migration 0004 (whose upload's chunks all carry an MD5)."""
        sha256, md5 = stored
        if sha256 is not None:
            return sha256 == self.sha256
        return md5 is not None and md5 == self.md5

    @property
    def key(self) -> tuple[uuid.UUID, int, int]:
        return (self.target.upload_id, self.target.file_index, self.target.chunk_index)


class _Outcome(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already_stored"
    # the same bytes, recorded before migration 0004: under the MD5-named key, not ours
    ALREADY_STORED_LEGACY = "already_stored_legacy"
    CONFLICT = "conflict"
    NOT_WRITABLE = "not_writable"
    CANCELLED = "cancelled"


class ChunkRecorder:
    """Records durable chunks in the database, many per transaction (group commit).

    Chunks arrive in parallel; each would otherwise pay a whole write transaction (on SQLite:
    the single writer's turn and an fsync of the log). Requests queue their record and wait;
    one task writes everything queued in one transaction and answers each request. A record is
    answered only after its transaction committed, so an acknowledged chunk is durable in the
    database as well as in storage.

    On SQLite the transaction runs as one call in a thread on a synchronous connection: through
    aiosqlite every statement would be a hop between threads, and those hops, not SQLite, were
    most of a chunk's time.
    """

    def __init__(
        self, engine: AsyncEngine, *, sync_engine: Engine | None = None, max_batch: int = 256
    ) -> None:
        self._engine = engine
        # SQLite only (sync_engine: see create_sync_sqlite_engine)
        self._sqlite_writer = _SqliteChunkWriter(sync_engine) if sync_engine is not None else None
        self._max_batch = max_batch
        self._queue: list[tuple[_ChunkRecord, asyncio.Future[_Outcome]]] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, record: _ChunkRecord) -> _Outcome:
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((record, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        # shield: a client that disconnects does not cancel the batch others wait for
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            try:
                outcomes = await self._write([record for record, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)

    async def _write(self, batch: list[_ChunkRecord]) -> list[_Outcome]:
        if self._sqlite_writer is not None:
            async with sqlite_write_lock(self._engine):
                return await asyncio.to_thread(self._sqlite_writer.record, batch)
        async with self._engine.begin() as connection:
            return await connection.run_sync(_record_chunks, batch)


_ChunkKey = tuple[uuid.UUID, int, int]


def _record_chunks(connection: Connection, batch: list[_ChunkRecord]) -> list[_Outcome]:
    """Insert the batch's chunk rows (one transaction) and say what became of each."""
    upload_ids = {record.target.upload_id for record in batch}
    status_rows = connection.execute(
        select(Upload.id, Upload.status).where(Upload.id.in_(upload_ids))
    )
    # not dict(status_rows): a Result has .keys(), so dict() would treat it as a mapping
    statuses = {upload_id: status for upload_id, status in status_rows}  # noqa: C416
    writable = [r for r in batch if statuses.get(r.target.upload_id) == UploadStatus.PENDING]
    inserted: set[_ChunkKey] = set()
    stored: dict[_ChunkKey, tuple[str | None, str | None]] = {}
    if writable:
        insert = (
            postgresql_insert(UploadChunk)
            if connection.dialect.name == "postgresql"
            else sqlite_insert(UploadChunk)
        )
        now = utcnow()
        returned = connection.execute(
            insert.on_conflict_do_nothing()
            .values(
                [
                    {
                        "upload_id": r.target.upload_id,
                        "file_index": r.target.file_index,
                        "chunk_index": r.target.chunk_index,
                        "size": r.size,
                        "sha256": r.sha256,
                        "md5": r.md5,
                        "created_at": now,
                    }
                    for r in writable
                ]
            )
            .returning(UploadChunk.upload_id, UploadChunk.file_index, UploadChunk.chunk_index)
        )
        inserted = {(u, f, c) for u, f, c in returned}
        if len(inserted) < len(writable):  # some were there already: same bytes or not?
            rows = connection.execute(
                select(
                    UploadChunk.upload_id,
                    UploadChunk.file_index,
                    UploadChunk.chunk_index,
                    UploadChunk.sha256,
                    UploadChunk.md5,
                ).where(
                    tuple_(
                        UploadChunk.upload_id, UploadChunk.file_index, UploadChunk.chunk_index
                    ).in_([r.key for r in writable if r.key not in inserted])
                )
            )
            stored = {(u, f, c): (sha256, md5) for u, f, c, sha256, md5 in rows}
    return _outcomes(batch, statuses, inserted, stored)


def _outcomes(
    batch: list[_ChunkRecord],
    statuses: dict[uuid.UUID, UploadStatus],
    inserted: set[_ChunkKey],
    stored: dict[_ChunkKey, tuple[str | None, str | None]],
) -> list[_Outcome]:
    """What became of each record: its upload's status, whether its row was inserted now, and
    the digests (sha256, md5) of the rows that were there already."""
    outcomes = []
    for record in batch:
        status = statuses.get(record.target.upload_id)
        if status == UploadStatus.CANCELLED:
            outcomes.append(_Outcome.CANCELLED)
        elif status != UploadStatus.PENDING:
            outcomes.append(_Outcome.NOT_WRITABLE)
        elif record.key in inserted:
            inserted.discard(record.key)  # the same chunk twice in one batch: one stored it
            stored[record.key] = (record.sha256, record.md5)
            outcomes.append(_Outcome.STORED)
        elif record.key in stored and record.same_as(stored[record.key]):
            legacy = stored[record.key][0] is None
            outcomes.append(_Outcome.ALREADY_STORED_LEGACY if legacy else _Outcome.ALREADY_STORED)
        else:
            outcomes.append(_Outcome.CONFLICT)
    return outcomes


class _SqliteChunkWriter:
    """_record_chunks on SQLite, on the driver's connection: the same statements, written out
    once, with values converted by the columns' own types. Through SQLAlchemy Core the
    transaction and its two statements cost about 1 ms of Python per batch, which on a study of
    small files (a batch of 1-4 chunks) was a tenth of the serving process's time."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        upload, chunk = Upload.__table__.c, UploadChunk.__table__.c
        self._engine = engine
        self._uuid_in = column_processor(upload.id.type.bind_processor(dialect))
        self._uuid_out = column_processor(upload.id.type.result_processor(dialect, None))
        self._status_out = column_processor(upload.status.type.result_processor(dialect, None))
        self._time_in = column_processor(chunk.created_at.type.bind_processor(dialect))

    def record(self, batch: list[_ChunkRecord]) -> list[_Outcome]:
        """One write transaction (BEGIN IMMEDIATE). Blocking: call it in a thread."""
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                outcomes = self._record(cursor, batch)
                cursor.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may have ended the transaction already; the pool rolls back
                # on return anyway. The original error is the one to raise.
                with contextlib.suppress(sqlite3.Error):
                    cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
            return outcomes
        finally:
            connection.close()

    def _record(self, cursor: Any, batch: list[_ChunkRecord]) -> list[_Outcome]:
        ids = list({record.target.upload_id for record in batch})
        cursor.execute(
            f"SELECT id, status FROM upload WHERE id IN {_placeholders(1, len(ids))}",  # noqa: S608
            [self._uuid_in(i) for i in ids],
        )
        statuses = {self._uuid_out(i): self._status_out(status) for i, status in cursor}
        writable = [r for r in batch if statuses.get(r.target.upload_id) == UploadStatus.PENDING]
        inserted: set[_ChunkKey] = set()
        stored: dict[_ChunkKey, tuple[str | None, str | None]] = {}
        if writable:
            now = self._time_in(utcnow())
            params: list[Any] = []
            for r in writable:
                t = r.target
                params += [
                    self._uuid_in(t.upload_id),
                    t.file_index,
                    t.chunk_index,
                    r.size,
                    r.sha256,
                    r.md5,
                    now,
                ]
            cursor.execute(
                "INSERT INTO upload_chunk (upload_id, file_index, chunk_index, size, sha256, "  # noqa: S608
                f"md5, created_at) VALUES {_placeholders(len(writable), 7)} "
                "ON CONFLICT DO NOTHING RETURNING upload_id, file_index, chunk_index",
                params,
            )
            inserted = {(self._uuid_out(u), f, c) for u, f, c in cursor.fetchall()}
            for r in writable:  # rows there already: same bytes or not? (rare: a retry)
                if r.key in inserted or r.key in stored:
                    continue
                cursor.execute(
                    "SELECT sha256, md5 FROM upload_chunk "
                    "WHERE upload_id = ? AND file_index = ? AND chunk_index = ?",
                    (self._uuid_in(r.target.upload_id), r.target.file_index, r.target.chunk_index),
                )
                found = cursor.fetchone()
                if found is not None:
                    stored[r.key] = (found[0], found[1])
        return _outcomes(batch, statuses, inserted, stored)


def _placeholders(rows: int, columns: int) -> str:
    """SQL placeholders only (never a value): `(?, ?)` for 1 row of 2 columns, `(?), (?)` for
    2 rows of 1; the values go as parameters."""
    return ", ".join(["(" + ", ".join("?" * columns) + ")"] * rows)


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
        mismatch = ContentDigestMismatch if exc.algorithm == "sha256" else ContentMd5Mismatch
        raise mismatch() from None
    outcome = await recorder.record(_ChunkRecord(target, len(data), sha256, md5))
    if outcome == _Outcome.ALREADY_STORED_LEGACY:
        await storage.delete(key)  # ours: the recorded copy is under its MD5-named key
    if outcome == _Outcome.CONFLICT:
        await storage.delete(key)  # ours: the recorded chunk has another digest, hence another key
        raise ChunkConflict()
    if outcome == _Outcome.CANCELLED:
        await storage.delete(key)  # a cancelled upload has no recorded chunks left
        raise UploadNotWritable("This upload was cancelled.")
    if outcome == _Outcome.NOT_WRITABLE:
        # Never delete here: the key may be a recorded chunk of a completed upload.
        raise UploadNotWritable()
    if early is not None and target.whole_file and outcome == _Outcome.STORED:
        early.submit(target.upload_id, target.file_index, key, sha256)
    return ChunkStored(
        file_index=target.file_index,
        chunk_index=target.chunk_index,
        size=len(data),
        already_stored=outcome != _Outcome.STORED,
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


# --- completing -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class CompleteContext:
    db: Database
    verifier: StudyVerifier
    default_target: str | None = None  # the PACS that accepted studies are queued for
    on_queued: Callable[[], None] | None = None  # a study was queued: wake the forwarder


async def complete_upload(
    ctx: CompleteContext, *, user: User, upload_id: uuid.UUID, client_ip: str | None
) -> UploadRead:
    """Check that all chunks are there, verify every file, and accept or reject the study.

    No transaction is held while the files are verified. A crash during verification leaves the
    upload `received`; completing it again verifies it again.
    """
    async with ctx.db.sessionmaker() as session, session.begin():
        upload = await get_upload(session, upload_id=upload_id, user=user, write=True)
        if upload.status in ACCEPTED_STATUSES:
            return await read_upload(session, upload)
        if upload.status == UploadStatus.REJECTED:
            raise _rejection(await read_upload(session, upload))
        if upload.status == UploadStatus.CANCELLED:
            raise UploadNotWritable("This upload was cancelled.")
        # Columns, not ORM objects or the API view: a study has thousands of files, and this
        # was the gateway's peak of memory for a large one.
        files = [
            FileToVerify(index, sha256, count)
            for index, sha256, count in await session.execute(
                select(UploadFile.index, UploadFile.sha256, UploadFile.chunk_count)
                .where(UploadFile.upload_id == upload_id)
                .order_by(UploadFile.index)
            )
        ]
        recorded = await recorded_chunk_keys(session, upload_id)
        missing = {
            f.index: [i for i in range(f.chunk_count) if i not in recorded[f.index]]
            for f in files
            if len(recorded[f.index]) < f.chunk_count
        }
        keys = {index: list(chunks.values()) for index, chunks in recorded.items()}
        del recorded
        if missing:
            raise UploadIncomplete(
                f"{sum(len(m) for m in missing.values())} chunks are missing.",
                details={
                    "missing": [
                        {"file_index": index, "missing_chunks": chunks}
                        for index, chunks in missing.items()
                    ]
                },
            )
        upload.status = UploadStatus.RECEIVED
        declared_uid = upload.study_instance_uid

    verdicts = await ctx.verifier.verify(
        upload_id, declared_uid=declared_uid, files=files, keys=keys
    )
    rejected = [v for v in verdicts if v.error is not None]
    instances = sum(1 for v in verdicts if is_instance(v))
    final = UploadStatus.REJECTED if rejected else UploadStatus.VALIDATED
    queue = final == UploadStatus.VALIDATED and ctx.default_target is not None

    async with ctx.db.sessionmaker() as session, session.begin():
        await session.execute(
            update(UploadFile),
            [_file_update(upload_id, v) for v in verdicts],
        )
        moved = await session.execute(
            update(Upload)
            .where(Upload.id == upload_id, Upload.status == UploadStatus.RECEIVED)
            .values(
                status=UploadStatus.QUEUED if queue else final,
                instance_count=instances,
                completed_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        audit = functools.partial(
            record_event,
            session,
            actor_id=user.id,
            actor_role=user.role.value,
            object_type="upload",
            object_id=upload_id,
            study_instance_uid=declared_uid,
            client_ip=client_ip,
        )
        if moved.rowcount and queue:  # type: ignore[attr-defined]
            # The outbox: the job exists if and only if this transaction commits.
            assert ctx.default_target is not None
            forwarding.enqueue(session, upload_id=upload_id, target=ctx.default_target)
        if moved.rowcount:  # type: ignore[attr-defined]
            for v in verdicts:
                if v.summary is not None and v.summary.preamble == "nonzero" and v.error is None:
                    await audit(
                        action="dicom.preamble_nonzero",
                        details={"file_index": v.index, "handling": "zeroed_on_forward"},
                    )
            await audit(
                action="upload.complete",
                outcome="success" if final == UploadStatus.VALIDATED else "rejected",
                details={
                    "instances": instances,
                    "rejected_files": len(rejected),
                    "codes": sorted({v.error.code for v in rejected if v.error}),
                },
            )
        queued = bool(moved.rowcount) and queue  # type: ignore[attr-defined]
    # Committed: the forwarder starts now, while the answer (every file) is being built.
    if queued and ctx.on_queued is not None:
        ctx.on_queued()
    async with ctx.db.read_sessionmaker() as session, session.begin():
        finished = await session.get(Upload, upload_id)
        assert finished is not None
        view = await read_upload(session, finished)
    if view.status == UploadStatus.REJECTED:
        raise _rejection(view)
    if view.status not in ACCEPTED_STATUSES:
        raise UploadNotWritable(f"This upload is {view.status.value}.")
    return view


def _file_update(upload_id: uuid.UUID, verdict: FileVerdict) -> dict[str, Any]:
    summary = verdict.summary
    return {
        "upload_id": upload_id,
        "index": verdict.index,
        "status": FileStatus.REJECTED if verdict.error else FileStatus.VALID,
        "forward_status": ForwardStatus.PENDING
        if verdict.error is None and summary is not None and summary.kind == "instance"
        else None,
        "kind": summary.kind if summary else None,
        "preamble": summary.preamble if summary else None,
        "sop_instance_uid": summary.sop_instance_uid if summary else None,
        "sop_class_uid": summary.sop_class_uid if summary else None,
        "series_instance_uid": summary.series_instance_uid if summary else None,
        "transfer_syntax_uid": summary.transfer_syntax_uid if summary else None,
        "error_code": verdict.error.code if verdict.error else None,
        "error_message": verdict.error.message if verdict.error else None,
    }


def _rejection(view: UploadRead) -> UploadRejected:
    files = [
        {"index": f.index, "name": f.name, "code": f.error.code, "message": f.error.message}
        for f in view.files or ()
        if f.error is not None
    ]
    return UploadRejected(
        f"{len(files)} of {view.file_count} files failed verification.",
        details={"files": files, "upload": view.model_dump(mode="json", exclude={"files"})},
    )


# --- cancelling -----------------------------------------------------------------------------


async def cancel_upload(
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: ObjectStorage,
    *,
    user: User,
    upload_id: uuid.UUID,
    client_ip: str | None,
) -> UploadRead:
    async with sessionmaker() as session, session.begin():
        upload = await get_upload(session, upload_id=upload_id, user=user, write=True)
        if upload.status in ACCEPTED_STATUSES:
            raise UploadNotCancellable()
        if upload.status != UploadStatus.CANCELLED:
            upload.status = UploadStatus.CANCELLED
            await session.execute(delete(UploadChunk).where(UploadChunk.upload_id == upload_id))
            await record_event(
                session,
                action="upload.cancel",
                actor_id=user.id,
                actor_role=user.role.value,
                object_type="upload",
                object_id=upload_id,
                study_instance_uid=upload.study_instance_uid,
                client_ip=client_ip,
            )
        await session.flush()
        view = await read_upload(session, upload)
    # After the commit: a chunk written concurrently finds the upload cancelled and removes itself.
    await storage.delete_prefix(upload_prefix(upload_id))
    return view


# --- administration (the admin domain asks these) ------------------------------------------

RETRYABLE = (UploadStatus.FAILED, UploadStatus.QUEUED, UploadStatus.FORWARDING)
ProblemKind = Literal["failed", "stuck", "queued", "forwarding"]


async def _locked(session: AsyncSession, upload_id: uuid.UUID) -> Upload:
    upload = await session.get(Upload, upload_id, with_for_update=True)
    if upload is None:
        raise UploadNotFound()
    return upload


async def retry_forwarding(session: AsyncSession, *, upload_id: uuid.UUID) -> Upload:
    """Send again what failed (and anything pending) now, resetting the retry schedule."""
    upload = await _locked(session, upload_id)
    if upload.status not in RETRYABLE:
        raise UploadNotRetryable()
    await session.execute(
        update(UploadFile)
        .where(
            UploadFile.upload_id == upload_id,
            UploadFile.forward_status == ForwardStatus.FAILED,
        )
        .values(forward_status=ForwardStatus.PENDING)
    )
    if not await forwarding.requeue(session, upload_id=upload_id):
        raise UploadNotRetryable("This upload has no forwarding job (no PACS was configured).")
    upload.status = UploadStatus.QUEUED
    return upload


async def cancel_forwarding(session: AsyncSession, *, upload_id: uuid.UUID) -> Upload:
    """Stop forwarding this upload for good (its stored files are the caller's to delete)."""
    upload = await _locked(session, upload_id)
    if upload.status == UploadStatus.DELIVERED:
        raise DeliveredUploadNotCancellable()
    upload.status = UploadStatus.CANCELLED
    await forwarding.cancel(session, upload_id=upload_id)
    return upload


async def list_problem_uploads(
    session: AsyncSession, *, problem: ProblemKind, stuck_minutes: int, limit: int, offset: int
) -> tuple[list[UploadSummary], int]:
    """`failed`: the PACS refused instances; `stuck`: queued or forwarding and retrying, or
    not moved for `stuck_minutes`; `queued`, `forwarding`: as they say. Newest change first."""
    query = select(Upload)
    if problem == "failed":
        query = query.where(Upload.status == UploadStatus.FAILED)
    elif problem in ("queued", "forwarding"):
        query = query.where(Upload.status == UploadStatus(problem))
    else:
        since = utcnow() - dt.timedelta(minutes=stuck_minutes)
        query = query.where(
            Upload.status.in_(
                [UploadStatus.QUEUED, UploadStatus.FORWARDING, UploadStatus.RECEIVED]
            ),
            or_(Upload.id.in_(forwarding.retrying_uploads()), Upload.updated_at < since),
        )
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    uploads = (
        await session.scalars(query.order_by(Upload.updated_at.desc()).limit(limit).offset(offset))
    ).all()
    return [summary_of(u, u.total_bytes) for u in uploads], int(total or 0)
