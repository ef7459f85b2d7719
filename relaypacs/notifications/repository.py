"""Every query of the notification table."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.notifications.models import Notification


def add_notification(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    kind: str,
    related_id: uuid.UUID | None,
    payload: dict[str, Any],
) -> None:
    session.add(Notification(user_id=user_id, type=kind, related_id=related_id, payload=payload))
