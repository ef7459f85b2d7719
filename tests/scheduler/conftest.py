"""The scheduler's tests: a database of their own per test (the lease rows of the session's
shared database are held by the other suites' apps), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relaypacs import migrate
from relaypacs.db import Database
from tests.api.conftest import app, client, make_account
from tests.conftest import POSTGRES_ADMIN_URL, _off_loop, _psql

__all__ = ["app", "client", "make_account"]


@contextlib.contextmanager
def new_postgres_database() -> Iterator[str]:
    """A new PostgreSQL database, migrated (its URL), dropped at the end."""
    name = f"relaypacs_sched_{secrets.token_hex(4)}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+asyncpg://{POSTGRES_ADMIN_URL.removeprefix('postgresql://')}/{name}"
        _off_loop(migrate.upgrade, url)
        yield url
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database, migrated, dropped at the end."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'relaypacs.db'}"
        _off_loop(migrate.upgrade, url)
        yield url
        return
    with new_postgres_database() as url:
        yield url


@pytest.fixture
async def replicas(fresh_database_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two replicas' databases: each its own engine and pool on the same database."""
    first, second = Database.open(fresh_database_url), Database.open(fresh_database_url)
    try:
        yield first, second
    finally:
        await asyncio.gather(first.close(), second.close())
