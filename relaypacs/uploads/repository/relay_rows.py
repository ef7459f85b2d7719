"""The rows the relay reads and writes while it forwards an upload (uploads.relay, the
forwarding worker's source): the files to send, their answers, failures and confirmation."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import NamedTuple, cast

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.uploads.models import (
    ForwardStatus,
    UploadChunk,
    UploadFile,
)
from relaypacs.uploads.repository import chunk_key


class FileToForward(NamedTuple):
    file_index: int
    sop_instance_uid: str | None
    size: int
    preamble: str | None
    forward_status: ForwardStatus | None
    series_instance_uid: str | None
    sha256: str
    forward_md5: str | None


async def files_to_forward(
    session: AsyncSession,
    upload_id: uuid.UUID,
    *,
    statuses: Sequence[ForwardStatus] | None = None,
) -> list[FileToForward]:
    """Every file of the upload that is forwarded (an instance), by index; with `statuses`,
    those in one of them. Columns, not ORM objects: a study has thousands of files, and this
    is the fixed cost before the first request goes out."""
    query = select(
        UploadFile.index,
        UploadFile.sop_instance_uid,
        UploadFile.size,
        UploadFile.preamble,
        UploadFile.forward_status,
        UploadFile.series_instance_uid,
        UploadFile.sha256,
        UploadFile.forward_md5,
    ).where(UploadFile.upload_id == upload_id, UploadFile.forward_status.is_not(None))
    if statuses is not None:
        query = query.where(UploadFile.forward_status.in_(statuses))
    rows = await session.execute(query.order_by(UploadFile.index))
    return [FileToForward._make(row) for row in rows]


class PendingPart(NamedTuple):
    file_index: int
    sop_instance_uid: str | None
    size: int
    preamble: str | None
    keys: tuple[str, ...]  # its recorded chunks' objects, in order


async def pending_parts(session: AsyncSession, upload_id: uuid.UUID) -> list[PendingPart]:
    """The files to send (forwarding pending), by index, with their chunks' object keys: one
    query that reads only them (a pipelined upload asks after each pass, while thousands of its
    files are sent already or not yet judged)."""
    rows = await session.execute(
        select(
            UploadFile.index,
            UploadFile.sop_instance_uid,
            UploadFile.size,
            UploadFile.preamble,
            UploadChunk.chunk_index,
            UploadChunk.sha256,
            UploadChunk.md5,
        )
        .join(
            UploadChunk,
            (UploadChunk.upload_id == UploadFile.upload_id)
            & (UploadChunk.file_index == UploadFile.index),
        )
        .where(
            UploadFile.upload_id == upload_id,
            UploadFile.forward_status == ForwardStatus.PENDING,
        )
        .order_by(UploadFile.index, UploadChunk.chunk_index)
    )
    parts: list[PendingPart] = []
    for index, sop_uid, size, preamble, chunk_index, sha256, md5 in rows:
        digest = sha256 or md5
        if digest is None:  # the schema's rows always have one of them
            raise ValueError("a chunk row with neither SHA-256 nor MD5")
        key = chunk_key(upload_id, index, chunk_index, digest)
        if parts and parts[-1].file_index == index:
            parts[-1] = parts[-1]._replace(keys=(*parts[-1].keys, key))
        else:
            parts.append(PendingPart(index, sop_uid, size, preamble, (key,)))
    return parts


async def forwarded_sop_uids(session: AsyncSession, upload_id: uuid.UUID) -> dict[int, str | None]:
    """The SOP Instance UID of every file the upload forwards, by index."""
    rows = await session.execute(
        select(UploadFile.index, UploadFile.sop_instance_uid).where(
            UploadFile.upload_id == upload_id, UploadFile.forward_status.is_not(None)
        )
    )
    return dict(rows.all())


async def fail_forwards(
    session: AsyncSession, upload_id: uuid.UUID, reasons: Mapping[int, str]
) -> None:
    """These files (by index) failed for good, each for its reason."""
    if reasons:
        await session.execute(
            update(UploadFile),
            [
                {
                    "upload_id": upload_id,
                    "index": index,
                    "forward_status": ForwardStatus.FAILED,
                    "forward_error": reason,
                }
                for index, reason in reasons.items()
            ],
        )


_FILES = cast(Table, UploadFile.__table__)
# Core, with its own parameter names: run executemany on the worker's connection (on SQLite in
# a thread call), a row per instance of the batch.
_RECORD_FORWARD_ANSWER = (
    update(_FILES)
    .where(_FILES.c.upload_id == bindparam("b_upload"), _FILES.c.index == bindparam("b_index"))
    .values(
        forward_status=bindparam("b_status"),
        forward_error=bindparam("b_error"),
        forward_md5=bindparam("b_md5"),
    )
)


def record_forward_answers(
    connection: Connection,
    upload_id: uuid.UUID,
    answers: Sequence[tuple[int, ForwardStatus, str | None, str | None]],
) -> None:
    """Each instance's (file index, forwarding status, error, MD5 of the bytes sent) after a
    STOW-RS answer."""
    connection.execute(
        _RECORD_FORWARD_ANSWER,
        [
            {
                "b_upload": upload_id,
                "b_index": index,
                "b_status": status,
                "b_error": error,
                "b_md5": md5,
            }
            for index, status, error, md5 in answers
        ],
    )


async def answered_file_indexes(session: AsyncSession, upload_id: uuid.UUID) -> list[int]:
    """The files the PACS answered stored (sent, or confirmed already)."""
    rows = await session.scalars(
        select(UploadFile.index).where(
            UploadFile.upload_id == upload_id,
            UploadFile.forward_status.in_((ForwardStatus.SENT, ForwardStatus.CONFIRMED)),
        )
    )
    return list(rows)


async def send_again(
    session: AsyncSession, upload_id: uuid.UUID, indexes: Sequence[int], reason: str
) -> None:
    """These files are to be sent again, for `reason`."""
    if indexes:
        await session.execute(
            update(UploadFile),
            [
                {
                    "upload_id": upload_id,
                    "index": index,
                    "forward_status": ForwardStatus.PENDING,
                    "forward_error": reason,
                }
                for index in indexes
            ],
        )


async def confirm_sent(session: AsyncSession, upload_id: uuid.UUID) -> None:
    """Every file still `sent` is confirmed (the PACS lists it)."""
    await session.execute(
        update(UploadFile)
        .where(UploadFile.upload_id == upload_id, UploadFile.forward_status == ForwardStatus.SENT)
        .values(forward_status=ForwardStatus.CONFIRMED, forward_error=None)
        .execution_options(synchronize_session=False)
    )


# --- the pipelined relay: instances judged on arrival, while the upload is still uploading ---


class ArrivedFile(NamedTuple):
    file_index: int
    sha256: str  # the manifest's
    forward_status: ForwardStatus | None


async def arrived_files(
    session: AsyncSession, upload_id: uuid.UUID, indexes: Sequence[int]
) -> dict[int, ArrivedFile]:
    """These files of the upload (by index) as the pipeline judges them."""
    rows = await session.execute(
        select(UploadFile.index, UploadFile.sha256, UploadFile.forward_status).where(
            UploadFile.upload_id == upload_id, UploadFile.index.in_(sorted(set(indexes)))
        )
    )
    found = [ArrivedFile._make(row) for row in rows]
    return {f.file_index: f for f in found}


async def sop_uids_in_upload(
    session: AsyncSession, upload_id: uuid.UUID, sop_instance_uids: Sequence[str]
) -> set[str]:
    """Of these SOP Instance UIDs, those a file of the upload has already (before `complete`:
    the instances pipelined so far)."""
    rows = await session.scalars(
        select(UploadFile.sop_instance_uid).where(
            UploadFile.upload_id == upload_id,
            UploadFile.sop_instance_uid.in_(sorted(set(sop_instance_uids))),
        )
    )
    return {uid for uid in rows if uid is not None}


async def pipelined_indexes(session: AsyncSession, upload_id: uuid.UUID) -> set[int]:
    """The files already judged and queued for the PACS (forwarding set) before `complete`."""
    rows = await session.scalars(
        select(UploadFile.index).where(
            UploadFile.upload_id == upload_id, UploadFile.forward_status.is_not(None)
        )
    )
    return set(rows)


async def at_pacs_count(session: AsyncSession, upload_id: uuid.UUID) -> int:
    """How many of the upload's instances the PACS answered stored (sent or confirmed)."""
    count = await session.scalar(
        select(func.count()).where(
            UploadFile.upload_id == upload_id,
            UploadFile.forward_status.in_((ForwardStatus.SENT, ForwardStatus.CONFIRMED)),
        )
    )
    return int(count or 0)


async def pending_count(session: AsyncSession, upload_id: uuid.UUID) -> int:
    """How many of the upload's instances wait to be sent (forwarding pending)."""
    count = await session.scalar(
        select(func.count()).where(
            UploadFile.upload_id == upload_id,
            UploadFile.forward_status == ForwardStatus.PENDING,
        )
    )
    return int(count or 0)


async def all_pipelined(session: AsyncSession, upload_id: uuid.UUID) -> bool:
    """Whether every file of the upload's manifest has been judged final on arrival and queued
    for the PACS (forwarding set) before `complete`: nothing more can come before it."""
    unjudged = await session.scalar(
        select(
            exists().where(UploadFile.upload_id == upload_id, UploadFile.forward_status.is_(None))
        )
    )
    return not unjudged
