"""Every query of the upload tables (upload, upload_file, upload_chunk), and the object keys of
the chunks they record.

This module: the object keys, an upload's row, starting, the chunks' rows the checks and the
upkeep read, completing and the administrators' lists. This package's other modules:
`read_rows`, the reads of an upload's views (synchronous, `Session`: a view is read in one
call, through `read_in_one_call` or `AsyncSession.run_sync`; the polled status and list as
plain columns); `chunk_rows`, the group commit of chunk rows (the chunk PUT's one write);
`relay_rows`, the rows the relay reads and writes while forwarding; `upkeep_rows`, the
scheduled upkeep's."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Select, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relaypacs.db import utcnow
from relaypacs.forwarding.service import DeliveredContent
from relaypacs.uploads.models import (
    FileStatus,
    ForwardStatus,
    Upload,
    UploadChunk,
    UploadFile,
    UploadStatus,
)
from relaypacs.uploads.verify import FileToVerify, FileVerdict

# --- object keys ----------------------------------------------------------------------------


def upload_prefix(upload_id: uuid.UUID) -> str:
    """The storage prefix of every chunk of the upload."""
    return f"uploads/{upload_id}/"


def chunk_key(upload_id: uuid.UUID, file_index: int, chunk_index: int, digest: str) -> str:
    # The digest (hex SHA-256; MD5 for rows from before migration 0004) is part of the key:
    # two racing writers of different bytes never overwrite each other's object; the database
    # row decides which one is the chunk. One flat directory per upload: a directory per file
    # would cost a mkdir and a parent fsync for every file.
    return f"{upload_prefix(upload_id)}{file_index}-{chunk_index}-{digest}"


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


# --- an upload's row (synchronous: read in one call) -----------------------------------------


def find_upload(session: Session, upload_id: uuid.UUID, *, lock: bool = False) -> Upload | None:
    """The upload's row (`lock`: FOR NO KEY UPDATE on PostgreSQL, until the transaction ends).
    Not FOR UPDATE: that would also block the FOR KEY SHARE lock that PostgreSQL's foreign key
    check takes on the upload when a worker updates its forward job a second time in one
    transaction (fence, then park or retry), while this transaction waits for that job: a
    deadlock (the pipelined relay's, uploads.pipeline)."""
    return session.get(Upload, upload_id, with_for_update={"key_share": True} if lock else None)


# --- lists ----------------------------------------------------------------------------------


async def _page(
    session: AsyncSession,
    query: Select[Upload],
    order: Sequence[Any],
    limit: int,
    offset: int,
) -> tuple[list[Upload], int]:
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    uploads = (await session.scalars(query.order_by(*order).limit(limit).offset(offset))).all()
    return list(uploads), int(total or 0)


async def uploads_in_status(
    session: AsyncSession,
    *,
    statuses: Sequence[UploadStatus],
    unmoved_since: dt.datetime | None = None,
    or_among: Select[uuid.UUID] | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Upload], int]:
    """A page of the uploads in one of `statuses` (latest change first) and how many there are
    in all; with `unmoved_since`, only those not changed since then or whose id is `or_among`
    (a subquery of upload ids)."""
    query = select(Upload).where(Upload.status.in_(statuses))
    if unmoved_since is not None:
        moved = Upload.updated_at < unmoved_since
        query = query.where(or_(Upload.id.in_(or_among), moved) if or_among is not None else moved)
    return await _page(session, query, (Upload.updated_at.desc(),), limit, offset)


# --- starting -------------------------------------------------------------------------------


async def serialise_starts(session: AsyncSession, user_id: uuid.UUID, study_hash: str) -> None:
    """Two inits of the same study by the same user at once must not both create an upload.
    SQLite runs writers one at a time already; on PostgreSQL (read committed) neither would see
    the other's row, so they take turns on an advisory lock of the transaction."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = hashlib.blake2b(f"{user_id}:{study_hash}".encode(), digest_size=8).digest()
    await session.execute(
        select(func.pg_advisory_xact_lock(int.from_bytes(key, "big", signed=True)))
    )


async def accepted_upload(
    session: AsyncSession, *, study_hash: str, accepted: Sequence[UploadStatus], user_id: uuid.UUID
) -> Upload | None:
    """The user's own oldest upload of the study in one of the `accepted` statuses. Another
    user's upload of the same study is theirs: it neither blocks this user nor is told of."""
    return await session.scalar(
        select(Upload)
        .where(
            Upload.study_hash == study_hash,
            Upload.status.in_(accepted),
            Upload.user_id == user_id,
        )
        .order_by(Upload.created_at)
        .limit(1)
    )


async def users_upload_of_study(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    study_hash: str,
    statuses: Sequence[UploadStatus],
) -> Upload | None:
    """The user's oldest upload of the study in one of `statuses`."""
    return await session.scalar(
        select(Upload)
        .where(
            Upload.user_id == user_id,
            Upload.study_hash == study_hash,
            Upload.status.in_(statuses),
        )
        .order_by(Upload.created_at)
        .limit(1)
    )


class NewFile(NamedTuple):
    name: str
    size: int
    sha256: str
    chunk_count: int


async def create_upload(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    study_instance_uid: str,
    study_hash: str,
    study_metadata: dict[str, Any],
    chunk_size: int,
    files: Sequence[NewFile],
    all_or_nothing: bool = False,
) -> Upload:
    """A new pending upload and its pending files (indexed in the order given)."""
    upload = Upload(
        all_or_nothing=all_or_nothing,
        id=uuid.uuid4(),
        user_id=user_id,
        study_instance_uid=study_instance_uid,
        study_hash=study_hash,
        status=UploadStatus.PENDING,
        study_metadata=study_metadata,
        chunk_size=chunk_size,
        file_count=len(files),
        total_bytes=sum(f.size for f in files),
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
                "chunk_count": f.chunk_count,
                "status": FileStatus.PENDING,
            }
            for index, f in enumerate(files)
        ],
    )
    return upload


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


def upload_facts(session: Session, upload_id: uuid.UUID) -> UploadFacts | None:
    row = session.execute(
        select(Upload.user_id, Upload.chunk_size).where(Upload.id == upload_id)
    ).one_or_none()
    if row is None:
        return None
    sizes = session.scalars(
        select(UploadFile.size).where(UploadFile.upload_id == upload_id).order_by(UploadFile.index)
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


async def pending_upload_ids(session: AsyncSession, *, limit: int) -> list[uuid.UUID]:
    """Uploads still taking chunks, most recently changed first."""
    rows = await session.scalars(
        select(Upload.id)
        .where(Upload.status == UploadStatus.PENDING)
        .order_by(Upload.updated_at.desc())
        .limit(limit)
    )
    return list(rows)


async def forget_chunks(
    session: AsyncSession, upload_id: uuid.UUID, chunks: Mapping[int, Sequence[int]]
) -> None:
    """Delete the rows of chunks whose objects are gone: they are missing again."""
    for file_index, chunk_indexes in chunks.items():
        await session.execute(
            delete(UploadChunk).where(
                UploadChunk.upload_id == upload_id,
                UploadChunk.file_index == file_index,
                UploadChunk.chunk_index.in_(chunk_indexes),
            )
        )


async def delete_chunk_rows(session: AsyncSession, upload_id: uuid.UUID) -> None:
    await session.execute(delete(UploadChunk).where(UploadChunk.upload_id == upload_id))


# --- completing -----------------------------------------------------------------------------


async def files_to_verify(session: AsyncSession, upload_id: uuid.UUID) -> list[FileToVerify]:
    """The upload's files as verification needs them, by index. Columns, not ORM objects: a
    study has thousands of files, and this was the gateway's peak of memory for a large one."""
    rows = await session.execute(
        select(UploadFile.index, UploadFile.sha256, UploadFile.chunk_count, UploadFile.name)
        .where(UploadFile.upload_id == upload_id)
        .order_by(UploadFile.index)
    )
    return [FileToVerify(*row) for row in rows]


async def record_verdicts(
    session: AsyncSession,
    upload_id: uuid.UUID,
    verdicts: Sequence[FileVerdict],
    *,
    forward: bool,
    delivered: Mapping[int, DeliveredContent],
    pipelined: Set[int] = frozenset(),
) -> None:
    """Each file's verdict: valid or rejected (and why), what it is, and whether it is to be
    forwarded (`forward`: the study was accepted; then each valid instance, but a second copy
    of the same bytes). An instance the target already holds with the same bytes (`delivered`)
    starts as sent: the forwarding only checks that the PACS still lists it. The files in
    `pipelined` were queued for the PACS while uploading: their forwarding state (sent,
    confirmed...) is the relay's and stays as it is; and a pipelined file whose verdict is
    still a valid instance to send is not written again: uploads.pipeline wrote that very
    verdict, from the same stored bytes, when it queued the file (one UPDATE per file of a
    study sent whole while uploading was most of what `complete` wrote)."""
    rows = [
        _verdict_row(upload_id, v, forward, delivered.get(v.index))
        for v in verdicts
        if not (v.index in pipelined and v.to_forward)
    ]
    kept = [
        {k: v for k, v in row.items() if k not in ("forward_status", "forward_md5")}
        for row in rows
        if row["index"] in pipelined
    ]
    rows = [row for row in rows if row["index"] not in pipelined]
    for batch in (rows, kept):
        if batch:
            await session.execute(update(UploadFile), batch)


def _verdict_row(
    upload_id: uuid.UUID,
    verdict: FileVerdict,
    forward: bool,
    delivered: DeliveredContent | None,
) -> dict[str, Any]:
    summary, error = verdict.summary, verdict.error
    status = None
    if forward and verdict.to_forward:
        status = ForwardStatus.SENT if delivered is not None else ForwardStatus.PENDING
    return {
        "upload_id": upload_id,
        "index": verdict.index,
        "status": FileStatus.REJECTED if error else FileStatus.VALID,
        "forward_status": status,
        "forward_md5": delivered.md5 if delivered is not None else None,
        "duplicate_of": verdict.duplicate_of,
        "kind": summary.kind if summary else None,
        "preamble": summary.preamble if summary else None,
        "sop_instance_uid": summary.sop_instance_uid if summary else None,
        "sop_class_uid": summary.sop_class_uid if summary else None,
        "series_instance_uid": summary.series_instance_uid if summary else None,
        "transfer_syntax_uid": summary.transfer_syntax_uid if summary else None,
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
    }


async def finish_verification(
    session: AsyncSession,
    upload_id: uuid.UUID,
    *,
    status: UploadStatus,
    instance_count: int,
    refused_count: int,
    all_or_nothing: bool,
) -> bool:
    """Move the upload from `received` to `status`; False if it was no longer `received` (a
    concurrent `complete` moved it first)."""
    moved = await session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == UploadStatus.RECEIVED)
        .values(
            status=status,
            instance_count=instance_count,
            refused_count=refused_count,
            all_or_nothing=all_or_nothing,
            completed_at=utcnow(),
            updated_at=utcnow(),
        )
    )
    return bool(moved.rowcount)  # type: ignore[attr-defined]


async def upload_owners(
    session: AsyncSession, upload_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """The user of each of these uploads (those that no longer exist: absent)."""
    rows = await session.execute(
        select(Upload.id, Upload.user_id).where(Upload.id.in_(set(upload_ids)))
    )
    # Not dict(rows): a Result has keys(), so dict() would take it for a mapping.
    return dict(rows.all())


async def reset_failed_forwards(session: AsyncSession, upload_id: uuid.UUID) -> None:
    """The files the PACS refused are to be sent again."""
    await session.execute(
        update(UploadFile)
        .where(
            UploadFile.upload_id == upload_id,
            UploadFile.forward_status == ForwardStatus.FAILED,
        )
        .values(forward_status=ForwardStatus.PENDING)
    )


async def reset_all_forwards(session: AsyncSession, upload_id: uuid.UUID) -> None:
    """Every accepted file is to be sent again (to another target than before)."""
    await session.execute(
        update(UploadFile)
        .where(UploadFile.upload_id == upload_id, UploadFile.forward_status.is_not(None))
        .values(forward_status=ForwardStatus.PENDING, forward_error=None)
    )


async def count_by_status(session: AsyncSession) -> dict[UploadStatus, int]:
    """How many uploads are in each status (the operators' gauge)."""
    rows = await session.execute(select(Upload.status, func.count()).group_by(Upload.status))
    return {row[0]: row[1] for row in rows.all()}
