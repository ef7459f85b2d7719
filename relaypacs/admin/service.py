"""Retry and cancel forwarding, for administrators."""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.service import record_event
from relaypacs.auth.models import User
from relaypacs.errors import Conflict
from relaypacs.forwarding import service as forwarding
from relaypacs.uploads.errors import UploadNotFound
from relaypacs.uploads.models import ForwardStatus, Upload, UploadFile, UploadStatus


class NotRetryable(Conflict):
    code = "upload_not_retryable"
    message = "Only uploads that failed, or are queued or being forwarded, can be retried."


class NotCancellable(Conflict):
    code = "upload_not_cancellable"
    message = "A delivered upload cannot be cancelled."


RETRYABLE = (UploadStatus.FAILED, UploadStatus.QUEUED, UploadStatus.FORWARDING)


async def _load(session: AsyncSession, upload_id: uuid.UUID) -> Upload:
    upload = await session.get(Upload, upload_id, with_for_update=True)
    if upload is None:
        raise UploadNotFound()
    return upload


async def retry_forwarding(
    session: AsyncSession, *, upload_id: uuid.UUID, admin: User, client_ip: str | None
) -> Upload:
    upload = await _load(session, upload_id)
    if upload.status not in RETRYABLE:
        raise NotRetryable()
    await session.execute(
        update(UploadFile)
        .where(
            UploadFile.upload_id == upload_id,
            UploadFile.forward_status == ForwardStatus.FAILED,
        )
        .values(forward_status=ForwardStatus.PENDING)
    )
    if not await forwarding.requeue(session, upload_id=upload_id):
        raise NotRetryable("This upload has no forwarding job (no PACS was configured).")
    upload.status = UploadStatus.QUEUED
    await record_event(
        session,
        action="admin.upload_retry",
        actor_id=admin.id,
        actor_role=admin.role.value,
        object_type="upload",
        object_id=upload_id,
        study_instance_uid=upload.study_instance_uid,
        client_ip=client_ip,
    )
    return upload


async def cancel_forwarding(
    session: AsyncSession, *, upload_id: uuid.UUID, admin: User, client_ip: str | None
) -> Upload:
    upload = await _load(session, upload_id)
    if upload.status == UploadStatus.DELIVERED:
        raise NotCancellable()
    upload.status = UploadStatus.CANCELLED
    await forwarding.cancel(session, upload_id=upload_id)
    await record_event(
        session,
        action="admin.upload_cancel",
        actor_id=admin.id,
        actor_role=admin.role.value,
        object_type="upload",
        object_id=upload_id,
        study_instance_uid=upload.study_instance_uid,
        client_ip=client_ip,
    )
    return upload
