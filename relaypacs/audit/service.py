"""Writing and reading audit records. Callers pass ids, codes and counts: never patient data."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.models import AuditEvent
from relaypacs.state import get_app_state

if TYPE_CHECKING:
    from fastapi import Request


logger = logging.getLogger(__name__)


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
            object_id=str(object_id)[:64] if object_id is not None else None,
            study_instance_uid=study_instance_uid,
            client_ip=client_ip,
            details=details or {},
        )
    )
    await session.flush()


def request_actor(request: Request) -> dict[str, Any]:
    """Who and from where, for record_event: the authenticated user (if any) and client IP."""
    user = getattr(request.state, "user", None)
    return {
        "actor_id": user.id if user is not None else None,
        "actor_role": user.role.value if user is not None else None,
        "client_ip": request.client.host if request.client else None,
    }


async def record_for_request(request: Request, *, action: str, **fields: Any) -> None:
    """One record in a transaction of its own, committed before the caller answers: a read of
    patient data is not served unless its record is stored."""
    sessionmaker: async_sessionmaker[AsyncSession] = get_app_state(request).db.sessionmaker
    async with sessionmaker() as session, session.begin():
        await record_event(session, action=action, **request_actor(request), **fields)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    actor_id: uuid.UUID | None = None
    action: str | None = None
    outcome: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    study_instance_uid: str | None = None
    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # exclusive

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        for column, value in (
            (AuditEvent.actor_id, self.actor_id),
            (AuditEvent.action, self.action),
            (AuditEvent.outcome, self.outcome),
            (AuditEvent.object_type, self.object_type),
            (AuditEvent.object_id, self.object_id),
            (AuditEvent.study_instance_uid, self.study_instance_uid),
        ):
            if value is not None:
                found.append(column == value)
        if self.since is not None:
            found.append(AuditEvent.at >= self.since)
        if self.until is not None:
            found.append(AuditEvent.at < self.until)
        return found

    def as_details(self) -> dict[str, str]:
        return {
            name: value.isoformat() if isinstance(value, dt.datetime) else str(value)
            for name, value in vars(self).items()
            if value is not None
        }


async def query_events(
    session: AsyncSession, where: AuditFilter, *, limit: int, before: int | None
) -> Sequence[AuditEvent]:
    """Newest first, `limit` records with ids below `before` (keyset pagination)."""
    query = select(AuditEvent).where(*where.conditions())
    if before is not None:
        query = query.where(AuditEvent.id < before)
    return (await session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit))).all()


async def stream_events(
    sessionmaker: async_sessionmaker[AsyncSession], where: AuditFilter, *, batch: int = 500
) -> AsyncIterator[AuditEvent]:
    """Every matching record, oldest first, read in batches by id (a short transaction each:
    an export of millions of records holds no transaction or memory for its whole length)."""
    async with sessionmaker() as session, session.begin():
        last = await session.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1))
    if last is None:
        return
    after = 0
    while True:
        async with sessionmaker() as session, session.begin():
            rows = (
                await session.scalars(
                    select(AuditEvent)
                    .where(*where.conditions(), AuditEvent.id > after, AuditEvent.id <= last)
                    .order_by(AuditEvent.id)
                    .limit(batch)
                )
            ).all()
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        after = rows[-1].id
