"""Writing audit records. Callers pass ids, codes and counts: never patient data."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import AuditEvent


async def record_event(
    session: AsyncSession,
    *,
    action: str,
    outcome: str = "success",
    actor_id: uuid.UUID | None = None,
    actor_role: str | None = None,
    object_type: str | None = None,
    object_id: uuid.UUID | str | None = None,
    study_instance_uid: str | None = None,
    client_ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            action=action,
            outcome=outcome,
            actor_id=actor_id,
            actor_role=actor_role,
            object_type=object_type,
            object_id=str(object_id) if object_id is not None else None,
            study_instance_uid=study_instance_uid,
            client_ip=client_ip,
            details=details or {},
        )
    )
    await session.flush()
