"""The group commit of chunk rows: the chunk PUT's one write, many chunks per transaction.

Each statement is defined once (SQLAlchemy Core), for a number of rows; two executors run them,
chosen once at start by `chunk_row_writer`: SQLAlchemy's connection (PostgreSQL), or, on SQLite,
the driver's connection, the whole transaction in one thread call (the hot path: see
SqliteChunkRowWriter)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Select, and_, bindparam, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.dml import ReturningInsert

from relaypacs.db import Database, sqlite_write_lock, utcnow
from relaypacs.uploads.models import Upload, UploadChunk, UploadStatus

ChunkKey = tuple[uuid.UUID, int, int]


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A durable chunk to record."""

    upload_id: uuid.UUID
    file_index: int
    chunk_index: int
    size: int
    sha256: str
    md5: str | None

    @property
    def key(self) -> ChunkKey:
        return (self.upload_id, self.file_index, self.chunk_index)


@dataclass(frozen=True, slots=True)
class RecordedBatch:
    """What the database said of a batch of chunk rows (relaypacs.uploads.chunks decides what
    became of each chunk)."""

    statuses: dict[uuid.UUID, UploadStatus]  # of the batch's uploads (one that is not: absent)
    inserted: set[ChunkKey]  # rows inserted now
    stored: dict[ChunkKey, tuple[str | None, str | None]]  # (sha256, md5) of rows there already


class ChunkRowWriter(Protocol):
    async def write(self, batch: list[ChunkRow]) -> RecordedBatch:
        """Insert the rows of the batch's pending uploads, in one transaction."""
        ...


def chunk_row_writer(db: Database) -> ChunkRowWriter:
    """The executor of the chunk group commit for this database (chosen once, at start)."""
    if db.sync_engine is not None:
        return SqliteChunkRowWriter(db.sync_engine, lock_of=db.engine)
    return CoreChunkRowWriter(db.engine)


@dataclass(frozen=True, eq=False)
class _Statement:
    """A statement of the group commit, defined once (SQLAlchemy Core) for `rows` rows of
    parameters: those of row i are named `{column}_{i}`, `columns` in this order."""

    sql: Select[Any] | ReturningInsert[Any]
    columns: tuple[str, ...]

    def named(self, rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {
            f"{name}_{i}": value
            for i, row in enumerate(rows)
            for name, value in zip(self.columns, row, strict=True)
        }


def _binds(columns: Sequence[ColumnElement[Any]], rows: int) -> list[list[Any]]:
    return [[bindparam(f"{c.key}_{i}", type_=c.type) for c in columns] for i in range(rows)]


_CHUNK = UploadChunk.__table__.c
_CHUNK_KEY = (_CHUNK.upload_id, _CHUNK.file_index, _CHUNK.chunk_index)
_NEW_CHUNK = (*_CHUNK_KEY, _CHUNK.size, _CHUNK.sha256, _CHUNK.md5, _CHUNK.created_at)
_UPLOAD_ID = Upload.__table__.c.id


@functools.lru_cache(maxsize=512)
def _statuses(rows: int) -> _Statement:
    """(id, status) of the uploads whose ids are given."""
    ids = [bind for (bind,) in _binds([_UPLOAD_ID], rows)]
    sql = select(_UPLOAD_ID, Upload.__table__.c.status).where(_UPLOAD_ID.in_(ids))
    return _Statement(sql, (_UPLOAD_ID.key,))


@functools.lru_cache(maxsize=512)
def _insert_new(dialect: str, rows: int) -> _Statement:
    """Insert the chunk rows that are not there yet; returns the keys of those inserted."""
    insert_into = postgresql_insert if dialect == "postgresql" else sqlite_insert
    values = [
        dict(zip((c.key for c in _NEW_CHUNK), row, strict=True)) for row in _binds(_NEW_CHUNK, rows)
    ]
    sql = insert_into(UploadChunk).values(values).on_conflict_do_nothing().returning(*_CHUNK_KEY)
    return _Statement(sql, tuple(c.key for c in _NEW_CHUNK))


@functools.lru_cache(maxsize=512)
def _stored_digests(rows: int) -> _Statement:
    """(upload_id, file_index, chunk_index, sha256, md5) of the chunk rows whose keys are
    given (one primary-key lookup each: a row-value IN is a table scan on SQLite)."""
    keys = [
        and_(*(c == b for c, b in zip(_CHUNK_KEY, row, strict=True)))
        for row in _binds(_CHUNK_KEY, rows)
    ]
    sql = select(*_CHUNK_KEY, _CHUNK.sha256, _CHUNK.md5).where(or_(*keys))
    return _Statement(sql, tuple(c.key for c in _CHUNK_KEY))


Execute = Callable[[_Statement, Sequence[Sequence[Any]]], Sequence[Any]]


def _record_batch(execute: Execute, dialect: str, batch: list[ChunkRow]) -> RecordedBatch:
    """Insert the rows of the batch's pending uploads (in the caller's transaction). `execute`
    runs a statement with rows of parameters and returns its rows."""
    ids = list({row.upload_id for row in batch})
    statuses: dict[uuid.UUID, UploadStatus] = dict(
        execute(_statuses(len(ids)), [(i,) for i in ids])  # rows of (id, status)
    )
    writable = [r for r in batch if statuses.get(r.upload_id) == UploadStatus.PENDING]
    inserted: set[ChunkKey] = set()
    stored: dict[ChunkKey, tuple[str | None, str | None]] = {}
    if writable:
        now = utcnow()
        new = [
            (r.upload_id, r.file_index, r.chunk_index, r.size, r.sha256, r.md5, now)
            for r in writable
        ]
        inserted = {(u, f, c) for u, f, c in execute(_insert_new(dialect, len(new)), new)}
        # Rows there already (rare: a retry): the same bytes or not?
        there = [] if len(inserted) == len(writable) else _keys_not_in(writable, inserted)
        if there:
            found = execute(_stored_digests(len(there)), there)
            stored = {(u, f, c): (sha256, md5) for u, f, c, sha256, md5 in found}
    return RecordedBatch(statuses, inserted, stored)


def _keys_not_in(rows: list[ChunkRow], keys: set[ChunkKey]) -> list[ChunkKey]:
    return list(dict.fromkeys(r.key for r in rows if r.key not in keys))


def record_chunk_rows(connection: Connection, batch: list[ChunkRow]) -> RecordedBatch:
    """The group commit through SQLAlchemy, in the connection's transaction."""

    def execute(statement: _Statement, rows: Sequence[Sequence[Any]]) -> Sequence[Any]:
        return connection.execute(statement.sql, statement.named(rows)).all()

    return _record_batch(execute, connection.dialect.name, batch)


class CoreChunkRowWriter:
    """The group commit through SQLAlchemy's async engine, one transaction per batch."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def write(self, batch: list[ChunkRow]) -> RecordedBatch:
        async with self._engine.begin() as connection:
            return await connection.run_sync(record_chunk_rows, batch)


Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement compiled for the driver: its SQL, and the column types' converters of its
    parameters (by position in a row of parameters) and of its result columns (by position),
    for the columns that need one."""

    sql: str
    bind: tuple[tuple[int, Convert], ...]
    result: tuple[tuple[int, Convert], ...]

    def run(self, cursor: Any, rows: Sequence[Sequence[Any]]) -> list[Any]:
        params: list[Any] = []
        for row in rows:
            values = list(row)
            for i, convert in self.bind:
                values[i] = convert(values[i])
            params += values
        cursor.execute(self.sql, params)
        found = cursor.fetchall()
        if not self.result:
            return found  # type: ignore[no-any-return]
        converted = []
        for row in found:
            values = list(row)
            for i, convert in self.result:
                values[i] = convert(values[i])
            converted.append(values)
        return converted


def _converters(processors: Sequence[Convert | None]) -> tuple[tuple[int, Convert], ...]:
    return tuple((i, p) for i, p in enumerate(processors) if p is not None)


class SqliteChunkRowWriter:
    """The group commit on SQLite's driver connection: the same statements, compiled once per
    number of rows, with values converted by the columns' own types. Through SQLAlchemy Core
    the transaction and its statements cost about 1 ms of Python per batch, which on a study of
    small files (a batch of 1-4 chunks) was a tenth of the serving process's time; and through
    aiosqlite every statement is a hop between threads, here the transaction is one."""

    def __init__(self, engine: Engine, *, lock_of: AsyncEngine | None = None) -> None:
        self._engine = engine
        self._dialect: Dialect = engine.dialect
        self._lock_of = lock_of  # the async engine whose writers this one takes turns with
        self._compiled: dict[_Statement, _Compiled] = {}

    async def write(self, batch: list[ChunkRow]) -> RecordedBatch:
        assert self._lock_of is not None, "writes of the running gateway take turns"
        async with sqlite_write_lock(self._lock_of):
            return await asyncio.to_thread(self.record, batch)

    def record(self, batch: list[ChunkRow]) -> RecordedBatch:
        """One write transaction (BEGIN IMMEDIATE). Blocking: call it in a thread."""
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                recorded = self._record(cursor, batch)
                cursor.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may have ended the transaction already; the pool rolls back
                # on return anyway. The original error is the one to raise.
                with contextlib.suppress(sqlite3.Error):
                    cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
            return recorded
        finally:
            connection.close()

    def _record(self, cursor: Any, batch: list[ChunkRow]) -> RecordedBatch:
        def execute(statement: _Statement, rows: Sequence[Sequence[Any]]) -> list[Any]:
            compiled = self._compiled.get(statement)
            if compiled is None:
                compiled = self._compiled[statement] = self._compile(statement)
            return compiled.run(cursor, rows)

        return _record_batch(execute, self._dialect.name, batch)

    def _compile(self, statement: _Statement) -> _Compiled:
        compiled = statement.sql.compile(dialect=self._dialect)
        # Positional parameters, row by row in the statement's column order: `run` sends them
        # so, without naming them.
        names = compiled.positiontup or []
        columns = statement.columns
        if len(names) % len(columns) or any(
            name != f"{columns[i % len(columns)]}_{i // len(columns)}"
            for i, name in enumerate(names)
        ):
            raise AssertionError(f"unexpected parameter order: {names}")
        binds = [compiled.binds[name].type for name in names[: len(columns)]]
        results = [column.type for column in statement.sql.exported_columns]
        return _Compiled(
            sql=compiled.string,
            bind=_converters([t.bind_processor(self._dialect) for t in binds]),
            result=_converters([t.result_processor(self._dialect, None) for t in results]),
        )
