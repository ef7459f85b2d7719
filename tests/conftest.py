"""Shared fixtures: databases (SQLite and a PostgreSQL database per run), apps, users."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from relaypacs import migrate

# Every server log of the run searched for the test data's patients at its end.
from tests.phiscan import (  # noqa: F401
    _capture_server_logs,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

POSTGRES_ADMIN_URL = os.environ.get(
    "RELAYPACS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432"
)


def _psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(
        ["psql", f"{POSTGRES_ADMIN_URL}/{database}", "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
    )


def _off_loop(function: Callable[..., object], *args: object) -> None:
    """Run `function` in a thread of its own: it uses asyncio.run, and a session fixture may be
    first asked for from inside a running event loop (an async test or fixture)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(function, *args).result()


@pytest.fixture(scope="session")
def postgres_owner_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated by its owner (the migrations'
    role), dropped at the end."""
    name = f"relaypacs_test_{secrets.token_hex(4)}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        host = POSTGRES_ADMIN_URL.removeprefix("postgresql://")
        url = f"postgresql+asyncpg://{host}/{name}"
        _off_loop(migrate.upgrade, url)
        yield url
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url(postgres_owner_url: str) -> Iterator[str]:
    """The same database as the gateway's own role sees it, as in production: not the tables'
    owner, granted `relaypacs db grant-app` (the audit log: read and append only)."""
    role = f"relaypacs_app_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    _psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        _off_loop(migrate.grant_app_role, postgres_owner_url, role)
        where = urlsplit(postgres_owner_url)
        address = f"{where.hostname}:{where.port or 5432}"
        yield f"postgresql+asyncpg://{role}:{password}@{address}{where.path}"
    finally:
        _psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        _psql(f"DROP OWNED BY {role}", database=urlsplit(postgres_owner_url).path.lstrip("/"))
        _psql(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "relaypacs.db"
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None] | None:
    for key in list(os.environ):
        if key.startswith("RELAYPACS_") and not key.startswith("RELAYPACS_TEST_"):
            monkeypatch.delenv(key)
    return None
