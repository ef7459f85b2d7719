"""Reading uploads: an upload's view (with its files, or its status alone, the view clients
poll), the user's list, and who may see an upload. Read in one call (`read_in_one_call`), the
polled status and list as columns (repository.read_rows)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_alone
from relaypacs.auth.models import Role, User
from relaypacs.db import Database, read_in_one_call
from relaypacs.forwarding import service as forwarding
from relaypacs.uploads import repository
from relaypacs.uploads.errors import UploadNotFound
from relaypacs.uploads.models import ForwardStatus, Upload, UploadStatus
from relaypacs.uploads.repository import read_rows
from relaypacs.uploads.repository.read_rows import UploadRow
from relaypacs.uploads.schemas import (
    FileError,
    ForwardingRead,
    StudyMetadata,
    UploadFileRead,
    UploadRead,
    UploadSummary,
)


def may_read(user: User, upload: Upload | UploadRow) -> bool:
    """The uploader and administrators see an upload."""
    return upload.user_id == user.id or user.role == Role.ADMIN


def summary(upload: Upload, received_bytes: int) -> UploadSummary:
    """An upload's summary (as the lists show it)."""
    return UploadSummary(**summary_fields(upload, received_bytes))


def summary_fields(upload: Upload | UploadRow, received_bytes: int) -> dict[str, Any]:
    """An upload's summary, as the fields of UploadSummary (or of UploadRead, its extension)."""
    return {
        "id": upload.id,
        "status": upload.status,
        "study_instance_uid": upload.study_instance_uid,
        "study_hash": upload.study_hash,
        "chunk_size": upload.chunk_size,
        "file_count": upload.file_count,
        "instance_count": upload.instance_count,
        "refused_files": upload.refused_count,
        "all_or_nothing": upload.all_or_nothing,
        "total_bytes": upload.total_bytes,
        "received_bytes": received_bytes,
        "metadata": StudyMetadata.model_validate(upload.study_metadata),
        "created_at": upload.created_at,
        "updated_at": upload.updated_at,
        "completed_at": upload.completed_at,
        "purged_at": upload.purged_at,
    }


V = TypeVar("V", Upload, UploadRow)


def visible(upload: V | None, upload_id: uuid.UUID, user: User, *, write: bool = False) -> V:
    """The upload (its row, or its columns) if this user may see it (`write`: change it, the
    uploader only); otherwise the same 404 as a missing one. Both are audited as denied
    accesses."""
    if upload is None:
        raise UploadNotFound().denying("upload", upload_id, reason="missing")
    if not (upload.user_id == user.id if write else may_read(user, upload)):
        raise UploadNotFound().denying("upload", upload_id, upload.study_instance_uid)
    return upload


async def get_upload(
    session: AsyncSession, *, upload_id: uuid.UUID, user: User, write: bool = False
) -> Upload:
    """The upload if this user may see it (`write`: change it); otherwise UploadNotFound."""
    upload = await session.run_sync(repository.find_upload, upload_id)
    return visible(upload, upload_id, user, write=write)


async def read_upload(
    session: AsyncSession, upload: Upload, *, chunks_complete: bool = False
) -> UploadRead:
    """The upload as the API shows it, with its files (`chunks_complete`: the caller found no
    chunk missing, as `complete` does before it accepts: the chunk rows are not read again)."""
    return await session.run_sync(_view, upload, with_files=True, chunks_complete=chunks_complete)


def _status_view(session: Session, row: UploadRow) -> UploadRead:
    """The upload's status without its file list (the view `upload --wait` polls: a few
    aggregate queries whatever the study's size)."""
    return UploadRead(
        **summary_fields(row, row.received_bytes),
        files=None,
        forwarding=_forwarding(session, row.id, row.delivered_at),
    )


async def show_upload(
    db: Database, *, upload_id: uuid.UUID, user: User, actor: Actor, with_files: bool
) -> UploadRead:
    """GET /uploads/{id}: the upload's view, with its files or its status alone, read in one
    call (read_in_one_call; the status as columns). Recorded: every read of the study's
    files, and any read by someone else than the uploader; not the uploader's own status poll
    (with_files=False), made every few seconds. The read has given its connection back before
    the record takes one."""

    def read(session: Session) -> tuple[UploadRead, uuid.UUID, str]:
        if with_files:
            upload = visible(repository.find_upload(session, upload_id), upload_id, user)
            return (
                _view(session, upload, with_files=True),
                upload.user_id,
                upload.study_instance_uid,
            )
        row = visible(read_rows.upload_row(session, upload_id), upload_id, user)
        return _status_view(session, row), row.user_id, row.study_instance_uid

    view, owner_id, study_instance_uid = await read_in_one_call(db, read)
    owner = owner_id == user.id
    if with_files or not owner:
        await record_alone(
            db.sessionmaker,
            actor=actor,
            action="upload.read",
            object_type="upload",
            object_id=upload_id,
            study_instance_uid=study_instance_uid,
            details={"files": with_files, "owner": owner},
        )
    return view


def _view(
    session: Session, upload: Upload, *, with_files: bool, chunks_complete: bool = False
) -> UploadRead:
    files = None
    if with_files:
        rows = read_rows.file_rows(session, upload.id)
        stored = None if chunks_complete else read_rows.stored_chunk_indexes(session, upload.id)
        files = [
            UploadFileRead(
                index=f.index,
                name=f.name,
                size=f.size,
                sha256=f.sha256,
                chunk_count=f.chunk_count,
                missing_chunks=[]
                if stored is None
                else [i for i in range(f.chunk_count) if i not in stored.get(f.index, ())],
                status=f.status,
                kind=f.kind,
                preamble=f.preamble,
                sop_instance_uid=f.sop_instance_uid,
                error=FileError(code=f.error_code, message=f.error_message or "")
                if f.error_code
                else None,
                forward_status=f.forward_status,
                forward_error=f.forward_error,
                duplicate_of=f.duplicate_of,
            )
            for f in rows
        ]
    received = read_rows.received_bytes(session, upload.id)
    return UploadRead(
        **summary_fields(upload, received),
        files=files,
        forwarding=_forwarding(session, upload.id, upload.delivered_at),
    )


def _forwarding(
    session: Session, upload_id: uuid.UUID, delivered_at: dt.datetime | None
) -> ForwardingRead | None:
    job = forwarding.job_summary(session, upload_id)
    if job is None:
        return None
    counts = read_rows.forward_status_counts(session, upload_id)
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
        delivered_at=delivered_at,
    )


async def list_uploads(
    db: Database,
    *,
    user: User,
    actor: Actor,
    status: UploadStatus | None,
    limit: int,
    offset: int,
) -> tuple[list[UploadSummary], int]:
    """A page of the user's own uploads, newest first, and how many there are in all. A page
    that shows study details is recorded before it is answered, once the read has given its
    connection back: a request never holds one pooled connection while it waits for another
    (as many lists at once as the pool has connections stalled the whole gateway). The page is
    read in one call (read_in_one_call), as columns."""

    def read(session: Session) -> tuple[list[UploadSummary], int]:
        rows, total = read_rows.user_upload_rows(
            session, user_id=user.id, status=status, limit=limit, offset=offset
        )
        return [UploadSummary(**summary_fields(r, r.received_bytes)) for r in rows], total

    items, total = await read_in_one_call(db, read)
    if items:
        await record_alone(
            db.sessionmaker,
            actor=actor,
            action="upload.list",
            object_type="upload",
            details={"upload_ids": [str(i.id) for i in items]},
        )
    return items, total
