"""Every query of the audit log: the insert of a record, the filtered page and the export stream."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.chain import GENESIS, ChainedRecord, link
from relaypacs.audit.models import AuditEvent
from relaypacs.db import utcnow

# The key of the PostgreSQL advisory lock that makes appends to the chain one line (any value
# the gateway uses for nothing else).
CHAIN_LOCK = 0x72656C6179  # "relay"


async def add_event(session: AsyncSession, event: AuditEvent) -> None:
    """Append one record to the hash chain (relaypacs/audit/chain.py); the caller's transaction
    commits it. Appends take turns: on PostgreSQL an advisory lock held to the end of the
    transaction (so put the record last in a long one); on SQLite a writing transaction already
    holds the database's only write lock."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(CHAIN_LOCK)))
    prev = await session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    prev = prev or GENESIS
    event.at = event.at or utcnow()
    # As the database will give it back (JSON types, string keys): the hash must match then.
    event.details = json.loads(json.dumps(event.details or {}))
    event.prev_hash = prev
    event.hash = link(prev, chained(event))
    session.add(event)
    await session.flush()


def chained(event: AuditEvent) -> ChainedRecord:
    return ChainedRecord(
        id=event.id or 0,
        at=event.at,
        actor_id=event.actor_id,
        actor_role=event.actor_role,
        action=event.action,
        object_type=event.object_type,
        object_id=event.object_id,
        study_instance_uid=event.study_instance_uid,
        outcome=event.outcome,
        client_ip=event.client_ip,
        details=event.details,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


async def chain_head(session: AsyncSession) -> tuple[int, str | None] | None:
    """The newest record's id and hash (None: an empty log)."""
    row = (
        await session.execute(
            select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
        )
    ).one_or_none()
    return (row.id, row.hash) if row is not None else None


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
