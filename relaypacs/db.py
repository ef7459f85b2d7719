"""Database engine, session factory, declarative base and the column types shared by all tables."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import URL, DateTime, Engine, MetaData, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def column_processor(processor: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """A column type's bind or result processor (``type.bind_processor(dialect)``), or the
    identity where the type needs none: for statements run on the driver's connection."""
    return processor if processor is not None else _unchanged


def _unchanged(value: Any) -> Any:
    return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# How long a writer waits for SQLite's lock (the busy timeout) before "database is locked".
BUSY_SECONDS = 60.0
# How long the user of a request is waited for when the database is locked, before the request
# is refused with 503 `database_busy` (relaypacs.errors.DatabaseBusy). In WAL mode a read waits
# for no writer; it waits only while another connection holds the whole file (a tool in
# EXCLUSIVE locking mode, a backup, a database taken out of WAL mode): a request then answered
# after BUSY_SECONDS, and every request behind it waited as long.
LOOKUP_BUSY_SECONDS = 2.0

# How long a request waits for a pooled connection before it is refused with 503 (a pool that
# stays empty that long is overloaded or deadlocked: waiting 30 s, SQLAlchemy's default, held
# every other request up behind it).
POOL_TIMEOUT_SECONDS = 5.0
# A pooled connection idle for longer than this is pinged before it is used (see
# _ping_idle_connections); one in steady use is not.
POOL_PING_IDLE_SECONDS = 1.0
# Connections are replaced after this long, whatever their use: below the idle and lifetime
# limits of the usual proxies and firewalls (SQLAlchemy's advice for such limits).
POOL_RECYCLE_SECONDS = 1800


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Build the engine. SQLite gets WAL, full fsync on commit and write-ahead locking."""
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            echo=echo,
            connect_args={"timeout": BUSY_SECONDS},
            pool_size=8,
            max_overflow=8,
            pool_timeout=POOL_TIMEOUT_SECONDS,
        )
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(
        url,
        echo=echo,
        pool_size=10,
        max_overflow=10,
        pool_recycle=POOL_RECYCLE_SECONDS,
        pool_timeout=POOL_TIMEOUT_SECONDS,
    )
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only if it sat idle for POOL_PING_IDLE_SECONDS.

    SQLAlchemy's `pool_pre_ping` pings at every checkout; with asyncpg a ping is a transaction
    of its own (BEGIN, a statement, ROLLBACK: three round trips), and it was half of the
    transactions of a status poll, a quarter of its CPU. Connections in steady use are the
    ones least likely to be stale; the ones that sat idle (across a database restart, past a
    proxy's idle timeout) are still pinged, and a failed ping makes the pool replace the
    connection (DisconnectionError, SQLAlchemy's documented way for a checkout event).
    A connection that breaks while in steady use fails its request with 503
    `database_unavailable` (relaypacs.main), and SQLAlchemy then replaces every connection of
    the pool made before the failure, as it does for any disconnect."""
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine.pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync_engine.pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < POOL_PING_IDLE_SECONDS:
            return  # new, or in steady use
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: the pool replaces the connection
            raise DisconnectionError("the pooled connection is gone") from exc
        if not alive:
            raise DisconnectionError("the pooled connection is gone")


def create_sync_sqlite_engine(url: URL | str, *, busy_seconds: float = BUSY_SECONDS) -> Engine:
    """A synchronous engine on the same SQLite file (pysqlite), configured like the async one
    (`busy_seconds`: its busy timeout).

    For hot paths that run a whole transaction in one thread call (see ChunkRecorder)."""
    sync_url = make_url(url).set(drivername="sqlite+pysqlite")
    engine = create_sync_engine(sync_url, connect_args={"timeout": busy_seconds}, pool_size=2)
    _configure_sqlite_engine(engine, busy_seconds=busy_seconds)
    return engine


_WRITE_LOCKS: dict[tuple[str, int], asyncio.Lock] = {}


def sqlite_write_lock(engine: AsyncEngine) -> asyncio.Lock:
    """The lock this process's SQLite writers take turns on (one per database file and event
    loop; call it with the loop running)."""
    key = (str(engine.url.database), id(asyncio.get_running_loop()))
    return _WRITE_LOCKS.setdefault(key, asyncio.Lock())


def _configure_sqlite(engine: AsyncEngine) -> None:
    _configure_sqlite_engine(engine.sync_engine)


def _configure_sqlite_engine(sync_engine: Engine, *, busy_seconds: float = BUSY_SECONDS) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is turned off so that we can BEGIN IMMEDIATE:
        # a deferred transaction that later writes fails with "database is locked" under
        # concurrency instead of waiting for the lock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={round(busy_seconds * 1000)}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        readonly = connection.get_execution_options().get(READONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


READONLY_OPTION = "relaypacs_readonly"


class _SerialisedSession(AsyncSession):
    """A writing session on SQLite: writers of this process queue on an asyncio lock.

    SQLite has one writer at a time. Without this, concurrent writers wait in SQLite's busy
    handler, which sleeps in steps of up to 100 ms and made chunk uploads crawl; with it they
    wait their turn on the event loop and each transaction starts the moment the last ends.
    """

    write_lock: asyncio.Lock

    async def __aenter__(self) -> _SerialisedSession:
        await self.write_lock.acquire()
        try:
            await super().__aenter__()
        except BaseException:
            self.write_lock.release()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await super().__aexit__(*exc_info)
        finally:
            self.write_lock.release()


def create_sessionmaker(
    engine: AsyncEngine, *, readonly: bool = False
) -> async_sessionmaker[AsyncSession]:
    """Sessions for writing, or (readonly=True) for reading only.

    On SQLite a writing transaction takes the database's write lock when it begins (and the
    process's writers take turns, see _SerialisedSession); reads use a deferred transaction so
    that they never wait for writers (WAL) nor block them. Writing sessions must be used as
    `async with sessionmaker() as session`.
    """
    if readonly:
        engine = engine.execution_options(**{READONLY_OPTION: True})
    elif engine.dialect.name == "sqlite":
        session_class = type(
            "SerialisedSession", (_SerialisedSession,), {"write_lock": sqlite_write_lock(engine)}
        )
        return async_sessionmaker(
            engine, class_=session_class, expire_on_commit=False, autoflush=False
        )
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


T = TypeVar("T")


@functools.lru_cache(maxsize=8)
def readonly_engine(engine: Engine) -> Engine:
    """`engine` with deferred (read-only) transactions on SQLite: made once per engine (it is
    a new object each time, and the request path used it for every request)."""
    return engine.execution_options(**{READONLY_OPTION: True})


@dataclass(frozen=True, eq=False)
class Database:
    """The database of a running gateway: its engine, the writing and reading session factories
    (see create_sessionmaker) and, on SQLite, a synchronous engine on the same file for the hot
    paths that run a whole transaction in one thread call, and another whose reads wait at most
    LOOKUP_BUSY_SECONDS for a lock (the user of each request)."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]
    sync_engine: Engine | None = None
    lookup_engine: Engine | None = None

    @classmethod
    def open(cls, url: str) -> Database:
        engine = create_engine(url)
        sqlite = engine.dialect.name == "sqlite"
        return cls(
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            read_sessionmaker=create_sessionmaker(engine, readonly=True),
            sync_engine=create_sync_sqlite_engine(engine.url) if sqlite else None,
            lookup_engine=create_sync_sqlite_engine(engine.url, busy_seconds=LOOKUP_BUSY_SECONDS)
            if sqlite
            else None,
        )

    async def close(self) -> None:
        for sync_engine in (self.sync_engine, self.lookup_engine):
            if sync_engine is not None:
                sync_engine.dispose()
        await self.engine.dispose()


@functools.lru_cache(maxsize=8)
def autocommit_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine` that run each statement outside any transaction (made once per
    engine; see read_in_one_call)."""
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        expire_on_commit=False,
        autoflush=False,
    )


async def read_in_one_call(db: Database, fn: Callable[[Session], T]) -> T:
    """Run the synchronous reader `fn` in one read, in as few hops as the database allows.
    On SQLite one thread call on the synchronous engine, in one read-only transaction (through
    aiosqlite every statement is several hops between threads: for the views polled many times
    a second, those hops were most of the cost); elsewhere `run_sync` on an async session
    (asyncpg needs no thread), its statements outside any transaction: at READ COMMITTED, the
    gateway's isolation level, each statement of a transaction sees a snapshot of its own
    anyway, so a read-only transaction added nothing but its BEGIN and COMMIT round trips.
    `fn` must only read, and must not keep ORM objects beyond the call."""
    sync_engine = db.sync_engine
    if sync_engine is not None:
        reader = readonly_engine(sync_engine)  # deferred BEGIN

        def in_thread() -> T:
            with Session(reader, expire_on_commit=False) as session, session.begin():
                return fn(session)

        return await asyncio.to_thread(in_thread)
    async with autocommit_sessionmaker(db.engine)() as session:
        return await session.run_sync(fn)
