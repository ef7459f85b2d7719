"""Notifying users: a notice is written in the transaction of what it tells of (its delivery to
the user is built by a later issue)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.notifications import repository


def notify(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    kind: str,
    related_id: uuid.UUID | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """A notice of `kind` (e.g. "upload_delivered") for the user, about `related_id`; written
    when the caller's transaction commits."""
    repository.add_notification(
        session, user_id=user_id, kind=kind, related_id=related_id, payload=payload or {}
    )
