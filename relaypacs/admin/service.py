"""Retry and cancel forwarding, for administrators: the upload domain changes the upload, this
records who asked."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.service import record_event
from relaypacs.auth.models import User
from relaypacs.uploads import service as uploads
from relaypacs.uploads.models import Upload


async def retry_forwarding(
    session: AsyncSession, *, upload_id: uuid.UUID, admin: User, client_ip: str | None
) -> Upload:
    upload = await uploads.retry_forwarding(session, upload_id=upload_id)
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
    upload = await uploads.cancel_forwarding(session, upload_id=upload_id)
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
