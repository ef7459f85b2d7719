"""What the uploader is told of their upload's progress before the PACS: received (every chunk
stored, being verified), validated (accepted: on its way to the PACS), rejected (no instance
could be accepted), expired (abandoned unfinished). Each is written in the transaction of the
change it tells of (notifications.service.notify); "delivered" and "failed" are told by the
forwarder's settle hook (uploads.relay.notify_uploader)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.notifications.service import notify
from relaypacs.uploads.models import Upload


def notify_received(session: AsyncSession, upload: Upload) -> None:
    notify(
        session,
        user_id=upload.user_id,
        kind="upload_received",
        related_id=upload.id,
        payload={"files": upload.file_count},
    )


def notify_judged(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    upload_id: uuid.UUID,
    rejected: bool,
    instances: int,
    refused: int,
) -> None:
    """Validated (queued, or kept where no PACS is configured) or rejected."""
    notify(
        session,
        user_id=user_id,
        kind="upload_rejected" if rejected else "upload_validated",
        related_id=upload_id,
        payload={"instances": instances, "refused_files": refused},
    )


def notify_expired(session: AsyncSession, upload: Upload, *, idle_hours: float) -> None:
    notify(
        session,
        user_id=upload.user_id,
        kind="upload_expired",
        related_id=upload.id,
        payload={"files": upload.file_count, "idle_hours": round(idle_hours, 2)},
    )
