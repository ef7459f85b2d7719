"""Notices pushed live: each committed notification reaches its user's open event streams, in
this process (embedded mode) or on every replica through Redis pub/sub.

A notification is written in the transaction of what it tells of (`service.notify`); it is
pushed only once that transaction commits. `notify` stashes the notice in the session's `info`;
a listener on every Session's commit hands what was stashed to the session's sink (the hub of
the app whose sessionmaker made the session: `NoticeHub.attach`). A rollback drops it.
Redis carries ids and counts only (notification payloads never hold patient data)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from relaypacs.redisconn import Breaker
from relaypacs.redisconn import connect as connect_redis

logger = logging.getLogger("relaypacs.notifications")

_PENDING = "relaypacs.notices.pending"
_SINK = "relaypacs.notices.sink"


@dataclass(frozen=True)
class LiveNotice:
    """A committed notification as its user's streams receive it."""

    id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    related_id: uuid.UUID | None
    payload: dict[str, Any]
    created_at: dt.datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "user_id": str(self.user_id),
            "kind": self.kind,
            "related_id": str(self.related_id) if self.related_id else None,
            "payload": self.payload,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LiveNotice:
        related = data.get("related_id")
        return cls(
            id=uuid.UUID(data["id"]),
            user_id=uuid.UUID(data["user_id"]),
            kind=str(data["kind"]),
            related_id=uuid.UUID(related) if related else None,
            payload=dict(data.get("payload") or {}),
            created_at=dt.datetime.fromisoformat(data["created_at"]),
        )


def stash(session: AsyncSession, notice: LiveNotice) -> None:
    """Push `notice` once the session's transaction commits (nothing if it rolls back)."""
    session.info.setdefault(_PENDING, []).append(notice)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    notices: list[LiveNotice] | None = session.info.pop(_PENDING, None)
    sink: Callable[[list[LiveNotice]], None] | None = session.info.get(_SINK)
    if notices and sink is not None:
        sink(notices)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


class Subscription:
    """One open stream's queue. Overflowing (a client that does not read) ends it: the client
    reconnects with Last-Event-ID and is replayed what it missed from the database. Closed
    when the client disconnects."""

    def __init__(self, user_id: uuid.UUID, size: int = 256) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[LiveNotice | None] = asyncio.Queue(size)
        self.overflowed = False
        self.closed = False

    def offer(self, notice: LiveNotice) -> None:
        try:
            self.queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.overflowed = True

    def close(self) -> None:
        """The client went away: the stream's loop ends at once."""
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


@dataclass(eq=False)
class NoticeHub:
    """This process's open streams, by user; fed by the commits of this process (no Redis) or
    by the Redis channel every replica publishes to and listens on."""

    redis_url: str | None = None
    channel: str = "relaypacs:notices"
    _streams: dict[uuid.UUID, set[Subscription]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _redis: Redis | None = None
    _listener: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _breaker: Breaker = field(default_factory=lambda: Breaker("notifications"))
    _used_tickets: dict[str, float] = field(default_factory=dict)
    # Called with every batch of notices this process committed (the mailer), once.
    on_committed: list[Callable[[list[LiveNotice]], Awaitable[None]]] = field(default_factory=list)
    listening: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Sessions of this sessionmaker push their notices to this hub when they commit."""
        sessionmaker.configure(info={**(sessionmaker.kw.get("info") or {}), _SINK: self.committed})

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.redis_url:
            self._redis = connect_redis(self.redis_url)
            self._listener = asyncio.create_task(self._listen(self.redis_url))
        else:
            self.listening.set()

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._redis is not None:
            await self._redis.aclose()

    # --- streams -------------------------------------------------------------------------------

    def open(self, user_id: uuid.UUID) -> Subscription:
        """A new stream of the user's notices (release it when the stream ends)."""
        subscription = Subscription(user_id)
        self._streams.setdefault(user_id, set()).add(subscription)
        return subscription

    def release(self, subscription: Subscription) -> None:
        streams = self._streams.get(subscription.user_id)
        if streams is not None:
            streams.discard(subscription)
            if not streams:
                del self._streams[subscription.user_id]

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._streams.values())

    def _fan_out(self, notices: list[LiveNotice]) -> None:
        for notice in notices:
            for subscription in self._streams.get(notice.user_id, ()):
                subscription.offer(notice)

    # --- publishing ----------------------------------------------------------------------------

    def committed(self, notices: list[LiveNotice]) -> None:
        """The sink of the sessions (called in the commit, maybe off the event loop's thread):
        schedule the push, never block the commit."""
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._spawn, self._push(list(notices)))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, notices: list[LiveNotice]) -> None:
        for callback in self.on_committed:
            try:
                await callback(notices)
            except Exception as exc:  # a mailer's failure never stops the push
                logger.warning("a notice callback failed: %s", type(exc).__name__)
        if self._redis is not None and self._breaker.closed:
            try:
                await self._redis.publish(self.channel, json.dumps([n.to_wire() for n in notices]))
                return  # every replica's listener fans it out, this one's included
            except Exception as exc:
                self._breaker.failed(exc)
        self._fan_out(notices)  # Redis down: this replica's streams at least

    async def _listen(self, url: str) -> None:
        """Every notice published on the channel, to this process's streams; reconnecting."""
        delay = 0.2
        while True:
            # No socket timeout: a subscriber waits for messages as long as it takes.
            client: Redis = Redis.from_url(url, socket_connect_timeout=1.0)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.listening.set()
                    delay = 0.2
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=5.0
                        )
                        if message is None or message.get("type") != "message":
                            continue
                        try:
                            batch = [LiveNotice.from_wire(d) for d in json.loads(message["data"])]
                        except (ValueError, KeyError, TypeError):
                            logger.warning("an unreadable message on the notices channel")
                            continue
                        self._fan_out(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                logger.warning(
                    "notices channel unavailable (%s): retrying in %.1f s",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                await client.aclose()

    # --- one-time stream tickets ----------------------------------------------------------------

    async def claim_ticket(self, ticket_id: str, ttl_seconds: float) -> bool:
        """True the first time a ticket is used (on any replica where Redis is configured)."""
        if self._redis is not None and self._breaker.closed:
            try:
                first = await self._redis.set(
                    f"{self.channel}:ticket:{ticket_id}", b"1", nx=True, ex=int(ttl_seconds) + 5
                )
                return bool(first)
            except Exception as exc:
                self._breaker.failed(exc)
        now = time.monotonic()
        for used, until in list(self._used_tickets.items()):
            if until < now:
                del self._used_tickets[used]
        if ticket_id in self._used_tickets:
            return False
        self._used_tickets[ticket_id] = now + ttl_seconds + 5
        return True


async def events(
    subscription: Subscription,
    replay: list[LiveNotice],
    *,
    heartbeat: float,
    lifetime: float,
    render: Callable[[LiveNotice], str],
) -> AsyncIterator[str]:
    """The text of an event stream: what was missed, then each new notice as it comes, a
    comment every `heartbeat` seconds, and the end after `lifetime` seconds (the client
    reconnects with Last-Event-ID)."""
    yield "retry: 3000\n\n"
    seen = set()
    for notice in replay:
        seen.add(notice.id)
        yield render(notice)
    deadline = time.monotonic() + lifetime
    while not subscription.overflowed and not subscription.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            # asyncio.timeout, not wait_for: no task per wait (2,000 idle streams).
            async with asyncio.timeout(min(heartbeat, left)):
                live = await subscription.queue.get()
        except TimeoutError:
            yield ": heartbeat\n\n"
            continue
        if live is None:  # closed
            return
        if live.id not in seen:
            yield render(live)
