"""Writing and reading audit records. Callers pass ids, codes and counts: never patient data.

A record names its actor (who, their role, from where) with an `Actor`, bound once per request
(see relaypacs/auth/dependencies.py, `ActorDep`)."""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit import repository
from relaypacs.audit.models import Actor, AuditEvent
from relaypacs.audit.repository import AuditFilter
from relaypacs.audit.schemas import (
    AuditEventList,
    AuditEventRead,
    AuditExport,
    AuditPage,
    AuditQuery,
)
from relaypacs.state import get_app_state

if TYPE_CHECKING:
    from fastapi import Request


logger = logging.getLogger(__name__)


async def record_event(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    outcome: str = "success",
    object_type: str | None = None,
    object_id: uuid.UUID | str | None = None,
    study_instance_uid: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """One record, in the caller's transaction: `actor` did `action` (SYSTEM: nobody signed in,
    e.g. the command line or the forwarding worker)."""
    actor_id, actor_role, client_ip = actor.id, actor.role, actor.client_ip
    await repository.add_event(
        session,
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
        ),
    )


def client_address(request: Request) -> str | None:
    """The client's address, for rate limits and audit records: the peer's, or the one a
    trusted proxy reported (the server believes X-Forwarded-For only from
    RELAYPACS_TRUSTED_PROXIES: `relaypacs serve`)."""
    client = request.client
    return client.host if client else None


def request_actor(request: Request) -> Actor:
    """Who and from where: the request's authenticated user (if any) and client address."""
    user = getattr(request.state, "user", None)
    return Actor(
        id=user.id if user is not None else None,
        role=user.role.value if user is not None else None,
        client_ip=client_address(request),
    )


async def record_alone(
    sessionmaker: async_sessionmaker[AsyncSession], *, actor: Actor, action: str, **fields: Any
) -> None:
    """One record in a transaction of its own, committed before the caller answers: a read of
    patient data is not served unless its record is stored."""
    async with sessionmaker() as session, session.begin():
        await record_event(session, actor=actor, action=action, **fields)


async def record_for_request(request: Request, *, action: str, **fields: Any) -> None:
    """record_alone, for the request's user and client address."""
    sessionmaker: async_sessionmaker[AsyncSession] = get_app_state(request).db.sessionmaker
    await record_alone(sessionmaker, actor=request_actor(request), action=action, **fields)


# --- reading ---------------------------------------------------------------------------------

EXPORT_COLUMNS = [
    "id",
    "at",
    "actor_id",
    "actor_role",
    "action",
    "outcome",
    "object_type",
    "object_id",
    "study_instance_uid",
    "client_ip",
    "details",
]


def _filter(query: AuditQuery) -> AuditFilter:
    return AuditFilter(
        actor_id=query.actor_id,
        action=query.action,
        outcome=query.outcome,
        object_type=query.object_type,
        object_id=query.object_id,
        study_instance_uid=query.study_instance_uid,
        since=query.since,
        until=query.until,
    )


async def query_log(
    read_sessionmaker: async_sessionmaker[AsyncSession],
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    actor: Actor,
    query: AuditPage,
) -> AuditEventList:
    """One page of the log, newest first; the query itself is recorded first, in a transaction
    of its own. One connection at a time: the record's is back in the pool before the read
    takes one (a request holding a connection while waiting for a second deadlocks the pool
    once enough such requests run at once)."""
    where = _filter(query)
    await record_alone(
        sessionmaker,
        actor=actor,
        action="audit.query",
        details={**where.as_details(), "limit": query.limit, "before": query.before},
    )
    async with read_sessionmaker() as session, session.begin():
        rows = await repository.query_events(session, where, limit=query.limit, before=query.before)
    return AuditEventList(
        items=[AuditEventRead.model_validate(r) for r in rows],
        next_before=rows[-1].id if len(rows) == query.limit else None,
    )


def _safe_cell(value: str) -> str:
    # A spreadsheet would run a cell starting like a formula (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_safe_cell(v) for v in values])
    return buffer.getvalue()


async def export_log(
    read_sessionmaker: async_sessionmaker[AsyncSession],
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    actor: Actor,
    query: AuditExport,
) -> AsyncIterator[str]:
    """Every matching record, oldest first, as the lines of a CSV or JSON-lines file, read as
    they are sent (nothing is built in memory). The export is recorded before this returns."""
    where = _filter(query)
    await record_alone(
        sessionmaker,
        actor=actor,
        action="audit.export",
        details={**where.as_details(), "format": query.format},
    )
    records = repository.stream_events(read_sessionmaker, where)
    # The first record is read before the answer starts: a query that fails does so while a
    # clear error can still be sent, not after a 200 and its headers.
    first = await anext(records, None)

    async def rest() -> AsyncIterator[AuditEvent]:
        if first is None:
            return
        yield first
        async for event in records:
            yield event

    async def lines() -> AsyncIterator[str]:
        if query.format == "csv":
            yield _csv_line(EXPORT_COLUMNS)
        async for event in rest():
            row = AuditEventRead.model_validate(event).model_dump(mode="json")
            if query.format == "csv":
                yield _csv_line(
                    [
                        json.dumps(row[c], sort_keys=True)
                        if c == "details"
                        else ("" if row[c] is None else str(row[c]))
                        for c in EXPORT_COLUMNS
                    ]
                )
            else:
                yield json.dumps(row, sort_keys=True) + "\n"

    return lines()


# --- the chain's head ------------------------------------------------------------------------

chain_logger = logging.getLogger("relaypacs.audit.chain")


async def log_chain_head(read_sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Write the audit chain's head (the newest record's id and hash) to the log: kept by the
    log's own retention or shipped elsewhere, it lets `relaypacs audit verify --head ID:HASH`
    see a truncation later. Ids and hashes only."""
    async with read_sessionmaker() as session, session.begin():
        head = await repository.chain_head(session)
    if head is not None:
        chain_logger.info("audit chain head %d:%s", head[0], head[1])


async def history(
    session: AsyncSession, *, objects: Sequence[tuple[str, str]], actions: Sequence[str]
) -> Sequence[AuditEvent]:
    """What was done to these objects ((type, id) pairs), by these actions, oldest first: a
    study's timeline."""
    return await repository.object_history(session, objects, actions)
