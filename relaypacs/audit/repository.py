"""Every query of the audit log: the append of a record to the chain, the chain's head and its
walk, the filtered page and the export stream."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from relaypacs.audit.chain import FIELDS, GENESIS, ChainedRecord, ChainReport, ChainWalk, link
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
    await add_events(session, [event])


async def add_events(session: AsyncSession, events: Sequence[AuditEvent]) -> None:
    """Append these records to the hash chain, in this order (add_event, for several: one
    lock, one read of the chain's head)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(CHAIN_LOCK)))
    head = await chain_head(session)
    prev = head[1] if head is not None and head[1] is not None else GENESIS
    for event in events:
        event.at = event.at or utcnow()
        # As the database will give it back (JSON types, string keys): the hash must match then.
        event.details = json.loads(json.dumps(event.details or {}))
        event.prev_hash = prev
        event.hash = prev = link(prev, ChainedRecord.of(event))
        # One INSERT each, in order: the chain's head is the highest id, and one multi-row
        # INSERT does not promise to number its rows in order.
        session.add(event)
        await session.flush()


async def chain_head(session: AsyncSession) -> tuple[int, str | None] | None:
    """The newest record's id and hash (None: an empty log)."""
    row = (
        await session.execute(
            select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
        )
    ).one_or_none()
    return (row.id, row.hash) if row is not None else None


async def walk_log(
    connection: AsyncConnection, *, expected_head: tuple[int, str] | None = None, page: int = 2000
) -> ChainReport:
    """Verify the whole log's chain (relaypacs.audit.chain.ChainWalk), read in id order, a
    page at a time."""
    walk = ChainWalk(expected_head)
    after = -1
    while True:
        query = (
            select(*(getattr(AuditEvent, name) for name in FIELDS))
            .where(AuditEvent.id > after)
            .order_by(AuditEvent.id)
            .limit(page)
        )
        rows = (await connection.execute(query)).all()
        for row in rows:
            if not walk.feed(ChainedRecord.of(row)):
                return walk.report()
        if len(rows) < page:
            return walk.report()
        after = rows[-1].id


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


async def object_history(
    session: AsyncSession, objects: Sequence[tuple[str, str]], actions: Sequence[str]
) -> Sequence[AuditEvent]:
    """The records of these actions on these objects ((type, id) pairs), oldest first."""
    if not objects:
        return []
    query = select(AuditEvent).where(
        AuditEvent.object_id.in_([object_id for _, object_id in objects]),
        AuditEvent.action.in_(actions),
    )
    wanted = set(objects)
    rows = (await session.scalars(query.order_by(AuditEvent.id))).all()
    return [r for r in rows if (r.object_type, r.object_id) in wanted]
