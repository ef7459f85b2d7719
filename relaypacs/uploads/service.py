"""The use cases of study uploads: start or resume, read and list, store a chunk, cancel; and,
for administrators, retry or cancel forwarding and list the uploads that need attention.
Completing (verify, judge and accept or reject) is in `completion.py`, the chunk path in
`chunks.py`."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_alone, record_event
from relaypacs.auth.models import Role, User
from relaypacs.db import Database, read_in_one_call, utcnow
from relaypacs.forwarding import service as forwarding
from relaypacs.storage import ObjectStorage
from relaypacs.uploads import batches, chunks, repository
from relaypacs.uploads.chunks import ChunkDigests, ChunkIntake, chunk_count
from relaypacs.uploads.early import EarlyVerifier
from relaypacs.uploads.errors import (
    InvalidManifest,
    StudyAlreadyDelivered,
    UploadNotCancellable,
    UploadNotFound,
    UploadNotRetryable,
)
from relaypacs.uploads.models import (
    ACCEPTED_STATUSES,
    IN_PROGRESS_STATUSES,
    ForwardStatus,
    Upload,
    UploadStatus,
)
from relaypacs.uploads.repository import UploadRow, relay_rows, upkeep_rows
from relaypacs.uploads.schemas import (
    ChunkBatchStored,
    ChunkStored,
    FileError,
    ForwardingRead,
    StudyMetadata,
    UploadCreate,
    UploadFileRead,
    UploadRead,
    UploadSummary,
)

logger = logging.getLogger("relaypacs.uploads")


def study_hash(sha256s: Sequence[str]) -> str:
    """A study's identity for uploads: the hash of its files' SHA-256s, in any order."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def may_read(user: User, upload: Upload | UploadRow) -> bool:
    """The uploader and administrators see an upload."""
    return upload.user_id == user.id or user.role == Role.ADMIN


def _summary(upload: Upload, received_bytes: int) -> UploadSummary:
    return UploadSummary(**_summary_fields(upload, received_bytes))


def _summary_fields(upload: Upload | UploadRow, received_bytes: int) -> dict[str, Any]:
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


# --- reading --------------------------------------------------------------------------------


def _visible(
    upload: Upload | None, upload_id: uuid.UUID, user: User, *, write: bool = False
) -> Upload:
    """The upload if this user may see it (`write`: change it, the uploader only); otherwise
    the same 404 as a missing one. Both are audited as denied accesses."""
    if upload is None:
        raise UploadNotFound().denying("upload", upload_id, reason="missing")
    if not (upload.user_id == user.id if write else may_read(user, upload)):
        raise UploadNotFound().denying("upload", upload_id, upload.study_instance_uid)
    return upload


def _visible_row(row: UploadRow | None, upload_id: uuid.UUID, user: User) -> UploadRow:
    """_visible (to read) of an upload read as columns: the same answers."""
    if row is None:
        raise UploadNotFound().denying("upload", upload_id, reason="missing")
    if not may_read(user, row):
        raise UploadNotFound().denying("upload", upload_id, row.study_instance_uid)
    return row


async def get_upload(
    session: AsyncSession, *, upload_id: uuid.UUID, user: User, write: bool = False
) -> Upload:
    """The upload if this user may see it (`write`: change it); otherwise UploadNotFound."""
    upload = await session.run_sync(repository.find_upload, upload_id)
    return _visible(upload, upload_id, user, write=write)


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
        **_summary_fields(row, row.received_bytes),
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
            upload = _visible(repository.find_upload(session, upload_id), upload_id, user)
            return (
                _view(session, upload, with_files=True),
                upload.user_id,
                upload.study_instance_uid,
            )
        row = _visible_row(repository.upload_row(session, upload_id), upload_id, user)
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
        rows = repository.file_rows(session, upload.id)
        stored = None if chunks_complete else repository.stored_chunk_indexes(session, upload.id)
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
    received = repository.received_bytes(session, upload.id)
    return UploadRead(
        **_summary_fields(upload, received),
        files=files,
        forwarding=_forwarding(session, upload.id, upload.delivered_at),
    )


def _forwarding(
    session: Session, upload_id: uuid.UUID, delivered_at: dt.datetime | None
) -> ForwardingRead | None:
    job = forwarding.job_summary(session, upload_id)
    if job is None:
        return None
    counts = repository.forward_status_counts(session, upload_id)
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
        rows, total = repository.user_upload_rows(
            session, user_id=user.id, status=status, limit=limit, offset=offset
        )
        return [UploadSummary(**_summary_fields(r, r.received_bytes)) for r in rows], total

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


# --- the study, for the report domain -------------------------------------------------------


@dataclass(frozen=True)
class StudyFacts:
    """What a report keeps of its upload: whose it is and what the study is (PHI: never
    logged)."""

    upload_id: uuid.UUID
    uploader_id: uuid.UUID
    study_instance_uid: str
    metadata: StudyMetadata


@dataclass(frozen=True)
class StudyOverview:
    """An upload's study as a report page shows it: the patient and study details, the series
    and their instance counts, what the PACS confirmed."""

    facts: StudyFacts
    status: UploadStatus
    instance_count: int
    series: dict[str, int]  # SeriesInstanceUID -> valid instances
    target: str | None
    confirmed: int
    delivered_at: dt.datetime | None
    created_at: dt.datetime
    completed_at: dt.datetime | None
    attempts: int  # forwarding attempts that failed (reset by an administrator's retry)
    last_error: str | None  # the last forwarding attempt's error, if it failed


def _facts(upload: Upload) -> StudyFacts:
    return StudyFacts(
        upload_id=upload.id,
        uploader_id=upload.user_id,
        study_instance_uid=upload.study_instance_uid,
        metadata=StudyMetadata.model_validate(upload.study_metadata),
    )


async def study_facts(session: AsyncSession, *, upload_id: uuid.UUID) -> StudyFacts:
    """The study of an existing upload (the caller knows it exists: a settled delivery)."""
    upload = await session.run_sync(repository.find_upload, upload_id)
    if upload is None:
        raise UploadNotFound()
    return _facts(upload)


async def study_overview(session: AsyncSession, *, upload_id: uuid.UUID) -> StudyOverview:
    """The study of an upload for its report page (no check of who asks: the report domain
    decided that its user may see it)."""

    def read(sync: Session) -> StudyOverview:
        upload = repository.find_upload(sync, upload_id)
        if upload is None:
            raise UploadNotFound()
        series = repository.series_instance_counts(sync, upload_id)
        job = forwarding.job_summary(sync, upload_id)
        counts = repository.forward_status_counts(sync, upload_id)
        return StudyOverview(
            facts=_facts(upload),
            status=upload.status,
            instance_count=sum(counts.values()) or sum(series.values()),
            series=series,
            target=job.target if job else None,
            confirmed=counts.get(ForwardStatus.CONFIRMED, 0),
            delivered_at=upload.delivered_at,
            created_at=upload.created_at,
            completed_at=upload.completed_at,
            attempts=job.attempts if job else 0,
            last_error=job.last_error if job else None,
        )

    return await session.run_sync(read)


# --- starting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadLimits:
    chunk_size: int
    max_files: int
    max_file_size: int


async def start_upload(
    session: AsyncSession,
    *,
    user: User,
    body: UploadCreate,
    limits: UploadLimits,
    client_ip: str | None,
) -> tuple[UploadRead, bool]:
    """Create the upload, or return the user's upload of the same study still in progress.

    Returns (its view, created).
    """
    if len(body.files) > limits.max_files:
        raise InvalidManifest(f"An upload may list at most {limits.max_files} files.")
    too_big = [i for i, f in enumerate(body.files) if f.size > limits.max_file_size]
    if too_big:
        raise InvalidManifest(
            f"File {too_big[0]} is larger than the limit of {limits.max_file_size} bytes."
        )
    # The same bytes twice are allowed: verification sends one copy.
    digest = study_hash([f.sha256 for f in body.files])
    await repository.serialise_starts(session, user.id, digest)

    accepted = await repository.accepted_upload(
        session, study_hash=digest, accepted=ACCEPTED_STATUSES, user_id=user.id
    )
    if accepted is not None:  # this user's own, already accepted: say where it is
        received = await session.run_sync(repository.received_bytes, accepted.id)
        details: dict[str, Any] = {
            "status": accepted.status.value,
            "upload": _summary(accepted, received).model_dump(mode="json"),
        }
        raise StudyAlreadyDelivered(details=details)

    existing = await repository.users_upload_of_study(
        session, user_id=user.id, study_hash=digest, statuses=IN_PROGRESS_STATUSES
    )
    if existing is not None:
        await record_event(
            session,
            action="upload.resume",
            actor=user.actor(client_ip),
            object_type="upload",
            object_id=existing.id,
            study_instance_uid=existing.study_instance_uid,
        )
        return await read_upload(session, existing), False

    # The client may ask for smaller chunks (a cut link then resends less); never larger.
    chunk_size = min(body.chunk_size or limits.chunk_size, limits.chunk_size)
    upload = await repository.create_upload(
        session,
        user_id=user.id,
        study_instance_uid=body.study_instance_uid,
        study_hash=digest,
        study_metadata=body.metadata.model_dump(exclude_none=True),
        chunk_size=chunk_size,
        all_or_nothing=body.all_or_nothing,
        files=[
            repository.NewFile(f.name, f.size, f.sha256, chunk_count(f.size, chunk_size))
            for f in body.files
        ],
    )
    await record_event(
        session,
        action="upload.start",
        actor=user.actor(client_ip),
        object_type="upload",
        object_id=upload.id,
        study_instance_uid=upload.study_instance_uid,
        details={"files": upload.file_count, "bytes": upload.total_bytes},
    )
    return await read_upload(session, upload), True


# --- chunks ---------------------------------------------------------------------------------


async def put_chunk(
    intake: ChunkIntake,
    storage: ObjectStorage,
    *,
    user: User,
    upload_id: uuid.UUID,
    file_index: int,
    chunk_index: int,
    content_length: int | None,
    declared: ChunkDigests,
    read_body: Callable[[], Awaitable[bytes]],
) -> ChunkStored:
    """Check the chunk against the upload before its body is read, then read the body
    (`read_body`) and store it (see relaypacs.uploads.chunks)."""
    target = await chunks.prepare_chunk(
        intake.db,
        intake.facts,
        user=user,
        upload_id=upload_id,
        file_index=file_index,
        chunk_index=chunk_index,
        content_length=content_length,
    )
    # Bounded memory: the body's length is reserved before it is read, within the user's
    # share (uploads/bodies.py).
    async with intake.bodies.hold(user.id, content_length or 0):
        data = await read_body()
        return await chunks.store_chunk(
            intake.recorder,
            storage,
            target=target,
            declared=declared,
            data=data,
            early=intake.early,
        )


async def put_chunk_batch(
    intake: ChunkIntake,
    storage: ObjectStorage,
    *,
    user: User,
    upload_id: uuid.UUID,
    content_length: int | None,
    read_body: Callable[[int], Awaitable[bytes | bytearray]],
) -> ChunkBatchStored:
    """Several chunks in one request, each stored or refused on its own (see
    relaypacs.uploads.batches)."""
    return await batches.store_batch(
        intake,
        storage,
        user=user,
        upload_id=upload_id,
        content_length=content_length,
        read_body=read_body,
    )


# --- cancelling -----------------------------------------------------------------------------


async def cancel_upload(
    db: Database,
    storage: ObjectStorage,
    early: EarlyVerifier,
    *,
    user: User,
    upload_id: uuid.UUID,
    client_ip: str | None,
) -> UploadRead:
    """The uploader gives up: the upload takes no more chunks and its stored chunks go. The
    instances the PACS already stored (pipelined relay) stay there: the gateway cannot take
    them back; how many is recorded and shown (docs/api.md)."""
    async with db.sessionmaker() as session, session.begin():
        upload = await session.run_sync(repository.find_upload, upload_id, lock=True)
        upload = _visible(upload, upload_id, user, write=True)
        if upload.status in ACCEPTED_STATUSES:
            raise UploadNotCancellable()
        if upload.status != UploadStatus.CANCELLED:
            upload.status = UploadStatus.CANCELLED
            await repository.delete_chunk_rows(session, upload_id)
            # A pipelined upload's job stops; a worker sending now is fenced off.
            await forwarding.cancel(session, upload_id=upload_id)
            at_pacs = await relay_rows.at_pacs_count(session, upload_id)
            await record_event(
                session,
                action="upload.cancel",
                actor=user.actor(client_ip),
                object_type="upload",
                object_id=upload_id,
                study_instance_uid=upload.study_instance_uid,
                details={"already_at_pacs": at_pacs} if at_pacs else None,
            )
        await session.flush()
        view = await read_upload(session, upload)
    # After the commit: a chunk written concurrently finds the upload cancelled and removes itself.
    await storage.delete_prefix(repository.upload_prefix(upload_id))
    early.forget(upload_id)
    return view


# --- administration (the admin domain asks these) ------------------------------------------

RETRYABLE = (UploadStatus.FAILED, UploadStatus.QUEUED, UploadStatus.FORWARDING)
ProblemKind = Literal["failed", "stuck", "queued", "forwarding"]


async def _locked(session: AsyncSession, upload_id: uuid.UUID) -> Upload:
    upload = await session.run_sync(repository.find_upload, upload_id, lock=True)
    if upload is None:
        raise UploadNotFound()
    return upload


async def retry_forwarding(
    session: AsyncSession,
    *,
    upload_id: uuid.UUID,
    targets: Sequence[str] | None = None,
    default_target: str | None = None,
) -> Upload:
    """Send again what failed (and anything pending) now, resetting the retry schedule. If its
    PACS target was removed from the settings (not in `targets`), the study goes to
    `default_target`, every instance of it."""
    upload = await _locked(session, upload_id)
    if upload.status not in RETRYABLE:
        raise UploadNotRetryable()
    await repository.reset_failed_forwards(session, upload_id)
    requeued = await forwarding.requeue(
        session, upload_id=upload_id, targets=targets, default_target=default_target
    )
    if requeued is None:
        raise UploadNotRetryable("This upload has no forwarding job (no PACS was configured).")
    if requeued.retargeted:
        await repository.reset_all_forwards(session, upload_id)
    upload.status = UploadStatus.QUEUED
    return upload


async def cancel_forwarding(session: AsyncSession, *, upload_id: uuid.UUID) -> Upload:
    """Stop forwarding this upload for good (its stored files are the caller's to delete)."""
    upload = await _locked(session, upload_id)
    if upload.status == UploadStatus.DELIVERED:
        raise UploadNotCancellable("A delivered upload cannot be cancelled.")
    upload.status = UploadStatus.CANCELLED
    await forwarding.cancel(session, upload_id=upload_id)
    return upload


async def list_problem_uploads(
    session: AsyncSession, *, problem: ProblemKind, stuck_minutes: int, limit: int, offset: int
) -> tuple[list[UploadSummary], int]:
    """`failed`: the PACS refused instances; `stuck`: queued or forwarding and retrying, or
    not moved for `stuck_minutes`; `queued`, `forwarding`: as they say. Newest change first."""
    if problem == "failed":
        uploads, total = await repository.uploads_in_status(
            session, statuses=[UploadStatus.FAILED], limit=limit, offset=offset
        )
    elif problem in ("queued", "forwarding"):
        uploads, total = await repository.uploads_in_status(
            session, statuses=[UploadStatus(problem)], limit=limit, offset=offset
        )
    else:
        uploads, total = await repository.uploads_in_status(
            session,
            statuses=[UploadStatus.QUEUED, UploadStatus.FORWARDING, UploadStatus.RECEIVED],
            unmoved_since=utcnow() - dt.timedelta(minutes=stuck_minutes),
            or_among=forwarding.retrying_uploads(),
            limit=limit,
            offset=offset,
        )
    return [_summary(u, u.total_bytes) for u in uploads], total


async def count_uploads_by_status(session: AsyncSession) -> dict[UploadStatus, int]:
    """Every status with its number of uploads (zero included)."""
    counts = await repository.count_by_status(session)
    return {status: counts.get(status, 0) for status in UploadStatus}


def purged_delivered_uploads() -> Select[uuid.UUID]:
    """The ids of delivered uploads whose stored bytes retention deleted (a subquery)."""
    return upkeep_rows.purged_delivered_ids()
