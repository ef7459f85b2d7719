"""The audit log cannot be rewritten through the database: not by the gateway's own role (it
may only read and append), and not by the tables' owner without first removing the triggers."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaypacs import migrate
from relaypacs.db import create_engine

INSERT = (
    "INSERT INTO audit_event (at, action, outcome, details) "
    "VALUES (:at, 'test.tamper', 'success', '{}')"
)
REWRITES = [
    "UPDATE audit_event SET outcome = 'denied'",
    "DELETE FROM audit_event",
    "TRUNCATE audit_event",
]


async def engine_for(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(INSERT), {"at": dt.datetime.now(dt.UTC)})
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def app_role(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(postgres_url):
        yield engine


@pytest.fixture
async def owner(postgres_owner_url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in engine_for(postgres_owner_url):
        yield engine


async def refused(engine: AsyncEngine, statement: str) -> str:
    with pytest.raises(DBAPIError) as raised:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    return str(raised.value.orig)


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(text("SELECT count(*) FROM audit_event"))).scalar_one()
        )


class TestPostgresqlAppRole:
    @pytest.mark.parametrize("statement", REWRITES)
    async def test_it_may_only_read_and_append(self, app_role: AsyncEngine, statement: str) -> None:
        before = await count(app_role)
        assert "permission denied" in await refused(app_role, statement)
        assert await count(app_role) == before

    @pytest.mark.parametrize(
        "statement",
        [
            "DROP TRIGGER audit_event_append_only ON audit_event",
            "ALTER TABLE audit_event DISABLE TRIGGER ALL",
            "DROP TABLE audit_event",
        ],
    )
    async def test_it_cannot_remove_the_guards(self, app_role: AsyncEngine, statement: str) -> None:
        assert "must be owner" in await refused(app_role, statement)


class TestPostgresqlOwner:
    @pytest.mark.parametrize("statement", REWRITES)
    async def test_the_triggers_refuse_rewrites(self, owner: AsyncEngine, statement: str) -> None:
        before = await count(owner)
        assert "append-only" in await refused(owner, statement)
        assert await count(owner) == before


class TestSqlite:
    @pytest.fixture
    async def sqlite(self, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
        url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
        async for engine in engine_for(url):
            yield engine

    @pytest.mark.parametrize(
        "statement",
        [
            *REWRITES[:2],
            "INSERT OR REPLACE INTO audit_event (id, at, action, outcome, details) "
            "SELECT id, at, 'forged', 'success', '{}' FROM audit_event",
            "REPLACE INTO audit_event (id, at, action, outcome, details) "
            "SELECT id, at, 'forged', 'success', '{}' FROM audit_event",
        ],
    )
    async def test_rewrites_are_refused(self, sqlite: AsyncEngine, statement: str) -> None:
        assert "append-only" in await refused(sqlite, statement)
        async with sqlite.connect() as connection:
            actions = (await connection.execute(text("SELECT action FROM audit_event"))).all()
        assert [a for (a,) in actions] == ["test.tamper"]
