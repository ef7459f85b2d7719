"""The reads of an upload's views, synchronous (`Session`: read in one call, through
`read_in_one_call` or `AsyncSession.run_sync`), as columns rather than ORM objects: the status
that clients poll and the list (`upload_row`, `user_upload_rows`: ReadRoute's two reads), the
file list of the full view, the forwarding counts, and the series of the study as a report
shows it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, func, inspect, select
from sqlalchemy.orm import Session

from relaypacs.uploads.models import (
    FileStatus,
    ForwardStatus,
    Upload,
    UploadChunk,
    UploadFile,
    UploadStatus,
)

# --- an upload's view: its bytes, files and forwarding -----------------------------------------


def received_bytes(session: Session, upload_id: uuid.UUID) -> int:
    """The bytes of the upload's recorded chunks."""
    total = session.scalar(
        select(func.coalesce(func.sum(UploadChunk.size), 0)).where(
            UploadChunk.upload_id == upload_id
        )
    )
    return int(total or 0)


def stored_chunk_indexes(session: Session, upload_id: uuid.UUID) -> dict[int, set[int]]:
    """The indexes of the recorded chunks, by file index."""
    rows = session.execute(
        select(UploadChunk.file_index, UploadChunk.chunk_index).where(
            UploadChunk.upload_id == upload_id
        )
    )
    stored: dict[int, set[int]] = defaultdict(set)
    for file_index, chunk_index in rows:
        stored[file_index].add(chunk_index)
    return stored


@dataclass(frozen=True, slots=True)
class FileRow:
    """The columns of a file that its view shows (columns, not ORM objects: thousands of files
    for a large study)."""

    index: int
    name: str
    size: int
    sha256: str
    chunk_count: int
    status: FileStatus
    kind: str | None
    preamble: str | None
    sop_instance_uid: str | None
    error_code: str | None
    error_message: str | None
    forward_status: ForwardStatus | None
    forward_error: str | None
    duplicate_of: int | None


_FILE_ROW = tuple(getattr(UploadFile, f.name) for f in dataclasses.fields(FileRow))


def file_rows(session: Session, upload_id: uuid.UUID) -> list[FileRow]:
    """The upload's files, by index."""
    rows = session.execute(
        select(*_FILE_ROW).where(UploadFile.upload_id == upload_id).order_by(UploadFile.index)
    )
    return [FileRow(*tuple(row)) for row in rows]


def forward_status_counts(session: Session, upload_id: uuid.UUID) -> dict[ForwardStatus, int]:
    """How many of the upload's files are in each forwarding status (files with none: not
    counted)."""
    rows = session.execute(
        select(UploadFile.forward_status, func.count())
        .where(UploadFile.upload_id == upload_id, UploadFile.forward_status.is_not(None))
        .group_by(UploadFile.forward_status)
    )
    return {status: int(n) for status, n in rows if status is not None}


# --- the polled views: an upload's status and the list (columns, not ORM objects) -----------


@dataclass(frozen=True, slots=True)
class UploadRow:
    """The columns of an upload that its summary shows, with the bytes of its recorded chunks.
    Read as plain columns for the views clients poll, many at once (the status and the list):
    loading ORM objects was a large part of their cost (bench/README.md)."""

    id: uuid.UUID
    user_id: uuid.UUID
    status: UploadStatus
    study_instance_uid: str
    study_hash: str
    chunk_size: int
    file_count: int
    instance_count: int | None
    refused_count: int | None
    all_or_nothing: bool
    total_bytes: int
    study_metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    completed_at: dt.datetime | None
    delivered_at: dt.datetime | None
    purged_at: dt.datetime | None
    received_bytes: int


@functools.cache
def _statements() -> tuple[Select[Any], Select[Any], Select[Any], Select[Any], Select[Any]]:
    """The polled views' statements, made once: plain table columns (no ORM loading) and
    bound parameters, so that SQLAlchemy finds each compiled in its cache without building
    and hashing a new statement per request (a sixth of the list's cost). Made on first use,
    when every model is mapped (a foreign key column takes its type from the column it refers
    to)."""
    table = Upload.__table__
    chunks = UploadChunk.__table__
    mapper = inspect(Upload)
    columns = [
        mapper.columns[f.name] for f in dataclasses.fields(UploadRow) if f.name != "received_bytes"
    ]
    received = (
        select(func.coalesce(func.sum(chunks.c.size), 0))
        .where(chunks.c.upload_id == table.c.id)
        .scalar_subquery()
    )
    by_id = select(*columns, received).where(table.c.id == bindparam("upload_id"))
    mine = table.c.user_id == bindparam("user_id")
    of_status = table.c.status == bindparam("status")

    def page(*where: Any) -> Select[Any]:
        return (
            select(*columns, received)
            .where(*where)
            .order_by(table.c.created_at.desc(), table.c.id)
            .limit(bindparam("limit"))
            .offset(bindparam("offset"))
        )

    def count(*where: Any) -> Select[Any]:
        return select(func.count()).select_from(table).where(*where)

    return by_id, page(mine), page(mine, of_status), count(mine), count(mine, of_status)


def upload_row(session: Session, upload_id: uuid.UUID) -> UploadRow | None:
    """The upload's columns and received bytes, in one statement (None: no such upload)."""
    by_id = _statements()[0]
    row = session.execute(by_id, {"upload_id": upload_id}).first()
    return UploadRow(*tuple(row)) if row is not None else None


def user_upload_rows(
    session: Session,
    *,
    user_id: uuid.UUID,
    status: UploadStatus | None,
    limit: int,
    offset: int,
) -> tuple[list[UploadRow], int]:
    """A page of the user's uploads (newest first), with their received bytes, and how many
    there are in all: two statements."""
    _, page, page_of_status, count, count_of_status = _statements()
    where: dict[str, Any] = {"user_id": user_id}
    if status is not None:
        count, page = count_of_status, page_of_status
        where["status"] = status
    total = session.scalar(count, where)
    rows = session.execute(page, {**where, "limit": limit, "offset": offset})
    return [UploadRow(*tuple(row)) for row in rows], int(total or 0)


# --- the study as other domains see it -------------------------------------------------------


def series_instance_counts(session: Session, upload_id: uuid.UUID) -> dict[str, int]:
    """How many valid (not refused) instances each series of the upload has."""
    rows = session.execute(
        select(UploadFile.series_instance_uid, func.count())
        .where(
            UploadFile.upload_id == upload_id,
            UploadFile.series_instance_uid.is_not(None),
            UploadFile.error_code.is_(None),
            UploadFile.duplicate_of.is_(None),
        )
        .group_by(UploadFile.series_instance_uid)
    )
    return {str(series): int(n) for series, n in rows}
