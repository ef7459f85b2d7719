"""The administration console's use cases for uploads: the list of problem uploads, retry and
cancel of their forwarding. The upload domain changes the upload; this records who asked.
(The console's audit log endpoints call relaypacs.audit.service; its user administration is
relaypacs.users.)"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_alone, record_event
from relaypacs.forwarding.worker import Forwarder
from relaypacs.storage import ObjectStorage
from relaypacs.uploads import service as uploads
from relaypacs.uploads.models import Upload
from relaypacs.uploads.repository import upload_prefix
from relaypacs.uploads.schemas import UploadRead, UploadSummary
from relaypacs.uploads.service import ProblemKind


async def list_problem_uploads(
    read_sessionmaker: async_sessionmaker[AsyncSession],
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    actor: Actor,
    problem: ProblemKind,
    stuck_minutes: int,
    limit: int,
    offset: int,
) -> tuple[list[UploadSummary], int]:
    """A page of the uploads with `problem`, and how many in all. Other users' study details
    are shown: a non-empty page is recorded before it is answered, once the read has given its
    connection back (never one held while waiting for another)."""
    async with read_sessionmaker() as session, session.begin():
        items, total = await uploads.list_problem_uploads(
            session, problem=problem, stuck_minutes=stuck_minutes, limit=limit, offset=offset
        )
    if items:
        await record_alone(
            sessionmaker,
            actor=actor,
            action="admin.upload_list",
            object_type="upload",
            details={"status": problem, "upload_ids": [str(u.id) for u in items]},
        )
    return items, total


async def _act_on_upload(
    sessionmaker: async_sessionmaker[AsyncSession],
    change: Callable[[AsyncSession], Awaitable[Upload]],
    *,
    actor: Actor,
    action: str,
    upload_id: uuid.UUID,
) -> UploadRead:
    """Apply an administrator's `change` to an upload and record it, in one transaction."""
    async with sessionmaker() as session, session.begin():
        upload = await change(session)
        await record_event(
            session,
            actor=actor,
            action=action,
            object_type="upload",
            object_id=upload_id,
            study_instance_uid=upload.study_instance_uid,
        )
        return await uploads.read_upload(session, upload)


async def retry_forwarding(
    sessionmaker: async_sessionmaker[AsyncSession],
    forwarder: Forwarder | None,
    *,
    actor: Actor,
    upload_id: uuid.UUID,
) -> UploadRead:
    """Send again what failed (and anything pending) now, resetting the retry schedule; the
    forwarding worker of this process (if any) is woken."""
    view = await _act_on_upload(
        sessionmaker,
        lambda session: uploads.retry_forwarding(session, upload_id=upload_id),
        actor=actor,
        action="admin.upload_retry",
        upload_id=upload_id,
    )
    if forwarder is not None:
        forwarder.wake()
    return view


async def cancel_forwarding(
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: ObjectStorage,
    *,
    actor: Actor,
    upload_id: uuid.UUID,
) -> UploadRead:
    """Stop forwarding the upload for good and delete its stored files."""
    view = await _act_on_upload(
        sessionmaker,
        lambda session: uploads.cancel_forwarding(session, upload_id=upload_id),
        actor=actor,
        action="admin.upload_cancel",
        upload_id=upload_id,
    )
    await storage.delete_prefix(upload_prefix(upload_id))
    return view
