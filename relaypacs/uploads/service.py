"""The use cases of study uploads, the one way in for the router and for other domains (admin,
ops, reports): start or resume, read and list, store a chunk or a batch of chunks, cancel; for
administrators, retry or cancel forwarding and list the uploads that need attention; the study
as a report sees it. Each is written in a module of its own, re-exported here: `starting.py`,
`views.py`, `chunks.py` and `batches.py`, `administration.py`, `study.py`; completing (verify,
judge and accept or reject) is `completion.py`. Written here: the chunk PUT's entry point
(`put_chunk`: the body budget around chunks.py's two steps) and cancelling; a batch of chunks
is `batches.store_batch` itself (`put_chunk_batch`)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from relaypacs.audit.service import record_event
from relaypacs.auth.models import User
from relaypacs.db import Database
from relaypacs.forwarding import service as forwarding
from relaypacs.storage import ObjectStorage
from relaypacs.uploads import chunks, repository
from relaypacs.uploads.administration import (
    ProblemKind,
    cancel_forwarding,
    count_uploads_by_status,
    list_problem_uploads,
    purged_delivered_uploads,
    retry_forwarding,
)
from relaypacs.uploads.batches import store_batch as put_chunk_batch
from relaypacs.uploads.chunks import ChunkDigests, ChunkIntake
from relaypacs.uploads.early import EarlyVerifier
from relaypacs.uploads.errors import UploadNotCancellable
from relaypacs.uploads.models import ACCEPTED_STATUSES, UploadStatus
from relaypacs.uploads.repository import relay_rows
from relaypacs.uploads.schemas import ChunkStored, UploadRead
from relaypacs.uploads.starting import UploadLimits, start_upload, study_hash
from relaypacs.uploads.study import StudyFacts, StudyOverview, study_facts, study_overview
from relaypacs.uploads.views import get_upload, list_uploads, read_upload, show_upload, visible

__all__ = [
    "ProblemKind",
    "StudyFacts",
    "StudyOverview",
    "UploadLimits",
    "cancel_forwarding",
    "cancel_upload",
    "count_uploads_by_status",
    "get_upload",
    "list_problem_uploads",
    "list_uploads",
    "purged_delivered_uploads",
    "put_chunk",
    "put_chunk_batch",
    "read_upload",
    "retry_forwarding",
    "show_upload",
    "start_upload",
    "study_facts",
    "study_hash",
    "study_overview",
]


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
        upload = visible(upload, upload_id, user, write=True)
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
