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
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.uploads.models import (
    ForwardStatus,
    UploadFile,
)


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
