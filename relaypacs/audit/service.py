"""Writing and reading audit records. Callers pass ids, codes and counts: never patient data.

A record names its actor (who, their role, from where) with an `Actor`, bound once per request
(see relaypacs/auth/dependencies.py, `ActorDep`)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

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


class EventFields(TypedDict, total=False):
    """What a record says besides who did what (ids, codes and counts: never patient data);
    the same for a record in the caller's transaction (record_event) and one committed with
    others (record_alone). `outcome`: "success" unless said."""

    outcome: str
    object_type: str | None
    object_id: uuid.UUID | str | None
    study_instance_uid: str | None
    details: dict[str, Any] | None


async def record_event(
    session: AsyncSession, *, actor: Actor, action: str, **fields: Unpack[EventFields]
) -> None:
    """One record, in the caller's transaction: `actor` did `action` (SYSTEM: nobody signed in,
    e.g. the command line or the forwarding worker)."""
    await repository.add_event(session, _event(actor, action, fields))


def _event(actor: Actor, action: str, fields: EventFields) -> AuditEvent:
    object_id = fields.get("object_id")
    return AuditEvent(
        action=action,
        outcome=fields.get("outcome", "success"),
        actor_id=actor.id,
        actor_role=actor.role,
        object_type=fields.get("object_type"),
        object_id=str(object_id)[:64] if object_id is not None else None,
        study_instance_uid=fields.get("study_instance_uid"),
        client_ip=actor.client_ip,
        details=fields.get("details") or {},
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
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    actor: Actor,
    action: str,
    **fields: Unpack[EventFields],
) -> None:
    """One record, committed before the caller answers: a read of patient data is not served
    unless its record is stored. The records of concurrent callers are committed together
    (_GroupCommit), each caller still waiting for its own."""
    await _group_commit(sessionmaker).record(_event(actor, action, fields))


class _GroupCommit:
    """record_alone's writer for one database (its writing sessionmaker) in one event loop.

    A record in a transaction of its own took, for every list of uploads and every audited
    read, a turn on the chain's lock (PostgreSQL's advisory lock, SQLite's only writer) and a
    commit to disk; with many clients at once those turns queued up behind each other
    (bench/README.md, "The API under load"). Here the records that arrive while a transaction
    is being written wait for the next one, which appends them all (one lock, one read of the
    chain's head, one commit), and then each caller is answered. Should that transaction fail,
    each of its records is written alone again, as before: a record that cannot be stored
    fails its own caller only. The writing runs in a task of its own: a caller that goes away
    does not stop the others' records."""

    MAX_BATCH = 100

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._pending: list[tuple[AuditEvent, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, event: AuditEvent) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._pending.append((event, waiter))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        await waiter

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self.MAX_BATCH]
            del self._pending[: self.MAX_BATCH]
            try:
                await self._write([event for event, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _answer(batch[0][1], exc)
                    continue
                for event, waiter in batch:  # alone, so that one record fails only its caller
                    try:
                        await self._write([_copy(event)])
                    except Exception as alone:
                        _answer(waiter, alone)
                    else:
                        _answer(waiter, None)
            else:
                for _, waiter in batch:
                    _answer(waiter, None)

    async def _write(self, events: list[AuditEvent]) -> None:
        async with self._sessionmaker() as session, session.begin():
            await repository.add_events(session, events)


def _copy(event: AuditEvent) -> AuditEvent:
    """A new, unchained record of the same content (for a second try of a failed one)."""
    return AuditEvent(
        action=event.action,
        outcome=event.outcome,
        actor_id=event.actor_id,
        actor_role=event.actor_role,
        object_type=event.object_type,
        object_id=event.object_id,
        study_instance_uid=event.study_instance_uid,
        client_ip=event.client_ip,
        details=event.details,
    )


def _answer(waiter: asyncio.Future[None], error: BaseException | None) -> None:
    if waiter.done():  # its caller went away
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


_WRITERS: weakref.WeakKeyDictionary[
    async_sessionmaker[AsyncSession], dict[asyncio.AbstractEventLoop, _GroupCommit]
] = weakref.WeakKeyDictionary()


def _group_commit(sessionmaker: async_sessionmaker[AsyncSession]) -> _GroupCommit:
    loop = asyncio.get_running_loop()
    by_loop = _WRITERS.setdefault(sessionmaker, {})
    writer = by_loop.get(loop)
    if writer is None:
        for old in [other for other in by_loop if other.is_closed()]:
            del by_loop[old]
        writer = by_loop[loop] = _GroupCommit(sessionmaker)
    return writer


async def record_for_request(
    request: Request, *, action: str, **fields: Unpack[EventFields]
) -> None:
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
