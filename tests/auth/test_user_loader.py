"""SqliteUserLoader: on SQLite the user of every request is read with one plain statement, and a
User object is reused only while its row is unchanged, column for column. A change made by another
process (here: another SQLite connection, as `relaypacs users ...` or a second gateway would
make it) is seen by the very next request."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.auth.repository import RowUserLoader, SqliteUserLoader
from relaypacs.config import Settings
from relaypacs.db import create_engine
from relaypacs.main import create_app
from relaypacs.state import app_settings, app_state
from tests.auth.conftest import API, bearer, error_code, identity_settings, make_user, signed_in


@pytest.fixture
async def sqlite_app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings: Settings = identity_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", totp_required_roles=[]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def other_process_writes(app: FastAPI, sql: str, *params: object) -> None:
    """A write through a connection of its own, outside the app's engines and caches."""
    database = app_settings(app).resolved_database_url.split("///", 1)[1]
    connection = sqlite3.connect(database)
    try:
        with connection:
            changed = connection.execute(sql, params).rowcount
        assert changed == 1
    finally:
        connection.close()


async def me(app: FastAPI, token: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.get(f"{API}/auth/me", headers=bearer(token))


class TestSqliteUserLoader:
    async def test_embedded_mode_uses_it(self, sqlite_app: FastAPI) -> None:
        assert isinstance(app_state(sqlite_app).user_loader, SqliteUserLoader)

    async def test_an_unchanged_row_gives_the_same_object_and_a_changed_one_a_new_object(
        self, sqlite_app: FastAPI
    ) -> None:
        person = await make_user(sqlite_app)
        rows = app_state(sqlite_app).user_loader
        assert isinstance(rows, SqliteUserLoader)
        first = rows.load_blocking(person.id)
        assert first is not None
        assert rows.load_blocking(person.id) is first
        other_process_writes(
            sqlite_app, 'UPDATE "user" SET email = ? WHERE id = ?', "new@example.org", person.id.hex
        )
        changed = rows.load_blocking(person.id)
        assert changed is not first
        assert changed is not None
        assert changed.email == "new@example.org"
        assert first.email is None  # the object handed out before is never written to

    @pytest.mark.parametrize(
        ("sql", "status", "what"),
        [
            (
                'UPDATE "user" SET token_version = token_version + 1 WHERE id = ?',
                401,
                "session_ended",
            ),
            ('UPDATE "user" SET is_active = 0 WHERE id = ?', 401, "not_authenticated"),
            (
                'UPDATE "user" SET must_change_password = 1 WHERE id = ?',
                200,
                "must_change_password",
            ),
            ("UPDATE \"user\" SET role = 'admin' WHERE id = ?", 200, "role"),
        ],
    )
    async def test_a_change_by_another_process_counts_on_the_next_request(
        self, sqlite_app: FastAPI, sql: str, status: int, what: str | None
    ) -> None:
        person = await make_user(sqlite_app, role=Role.CLINICIAN)
        transport = httpx.ASGITransport(app=sqlite_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            token = (await signed_in(client, person))["access_token"]
        for _ in range(3):  # the row is known now
            before = await me(sqlite_app, token)
            assert before.status_code == 200
            assert before.json()["role"] == "clinician"
        other_process_writes(sqlite_app, sql, person.id.hex)
        after = await me(sqlite_app, token)
        assert after.status_code == status, after.text
        if status != 200:
            assert error_code(after) == what
        elif what == "role":
            assert after.json()["role"] == "admin"
        else:
            assert after.json()["must_change_password"] is True

    async def test_a_deleted_user_is_gone_at_once(self, sqlite_app: FastAPI) -> None:
        person = await make_user(sqlite_app)
        rows = app_state(sqlite_app).user_loader
        assert isinstance(rows, SqliteUserLoader)
        assert rows.load_blocking(person.id) is not None
        other_process_writes(sqlite_app, 'DELETE FROM "user" WHERE id = ?', person.id.hex)
        assert rows.load_blocking(person.id) is None


# --- PostgreSQL: RowUserLoader -------------------------------------------------------------


@pytest.fixture
async def postgres_app(tmp_path: Path, postgres_url: str) -> AsyncIterator[FastAPI]:
    settings: Settings = identity_settings(tmp_path, postgres_url, totp_required_roles=[])
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def another_replica_writes(postgres_url: str, sql: str, *params: object) -> None:
    """A write through a connection of its own (as another replica or `relaypacs users`)."""
    engine = create_engine(postgres_url)
    try:
        async with engine.begin() as connection:
            changed = (await connection.exec_driver_sql(sql, params)).rowcount
        assert changed == 1
    finally:
        await engine.dispose()


class TestRowUserLoader:
    async def test_a_server_database_uses_it(self, postgres_app: FastAPI) -> None:
        assert isinstance(app_state(postgres_app).user_loader, RowUserLoader)

    async def test_an_unchanged_row_gives_the_same_object_and_a_changed_one_a_new_object(
        self, postgres_app: FastAPI, postgres_url: str
    ) -> None:
        person = await make_user(postgres_app)
        rows = app_state(postgres_app).user_loader
        first = await rows.load(person.id)
        assert first is not None
        assert await rows.load(person.id) is first
        await another_replica_writes(
            postgres_url, 'UPDATE "user" SET email = $1 WHERE id = $2', "new@example.org", person.id
        )
        changed = await rows.load(person.id)
        assert changed is not first
        assert changed is not None
        assert changed.email == "new@example.org"
        assert first.email is None  # the object handed out before is never written to

    @pytest.mark.parametrize(
        ("sql", "status", "what"),
        [
            (
                'UPDATE "user" SET token_version = token_version + 1 WHERE id = $1',
                401,
                "session_ended",
            ),
            ('UPDATE "user" SET is_active = false WHERE id = $1', 401, "not_authenticated"),
            (
                'UPDATE "user" SET must_change_password = true WHERE id = $1',
                403,
                "password_change_required",
            ),
            ("UPDATE \"user\" SET role = 'admin' WHERE id = $1", 403, "forbidden"),
        ],
    )
    async def test_a_change_by_another_replica_counts_on_the_next_status_poll(
        self, postgres_app: FastAPI, postgres_url: str, sql: str, status: int, what: str
    ) -> None:
        """The polled views (ReadRoute) see it too: the list refuses an administrator (the
        policy), the status a temporary password (the full-use check)."""
        person = await make_user(postgres_app, role=Role.CLINICIAN)
        transport = httpx.ASGITransport(app=postgres_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            token = (await signed_in(client, person))["access_token"]
            for _ in range(3):  # the row is known now
                before = await client.get(f"{API}/uploads", headers=bearer(token))
                assert before.status_code == 200, before.text
            await another_replica_writes(postgres_url, sql, person.id)
            after = await client.get(f"{API}/uploads", headers=bearer(token))
        assert after.status_code == status, after.text
        assert error_code(after) == what

    async def test_a_deleted_user_is_gone_at_once(
        self, postgres_app: FastAPI, postgres_url: str
    ) -> None:
        person = await make_user(postgres_app)
        rows = app_state(postgres_app).user_loader
        assert await rows.load(person.id) is not None
        await another_replica_writes(postgres_url, 'DELETE FROM "user" WHERE id = $1', person.id)
        assert await rows.load(person.id) is None
