"""The user of every request: one plain statement per request, and a User object reused only while
its row is unchanged, column for column. SqliteUserLoader on SQLite, RowUserLoader on a server
database (PostgreSQL); the same tests run on both. A change made by another process (here: a
connection of its own, as `relaypacs users ...`, a second gateway or another replica would make
it) is seen by the very next request, the polled views (ReadRoute) included."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import bindparam, text

from relaypacs.auth.models import Role, User
from relaypacs.auth.repository import RowUserLoader, SqliteUserLoader, UserLoader
from relaypacs.config import Settings
from relaypacs.db import create_engine
from relaypacs.errors import DatabaseBusy
from relaypacs.main import create_app
from relaypacs.state import app_settings, app_state
from tests.auth.conftest import API, bearer, error_code, identity_settings, make_user, signed_in


@dataclass(frozen=True)
class Gateway:
    app: FastAPI
    loader: type[UserLoader]  # the one its database gets


@pytest.fixture(params=["sqlite", "postgresql"])
async def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    loader: type[UserLoader]
    if request.param == "sqlite":
        url, loader = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", SqliteUserLoader
    else:
        url, loader = request.getfixturevalue("postgres_url"), RowUserLoader
    settings: Settings = identity_settings(tmp_path, url, totp_required_roles=[])
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield Gateway(app, loader)


async def another_process_writes(app: FastAPI, sql: str, **params: object) -> None:
    """A write through a connection of its own, outside the app's engines and caches. `:id`
    in `sql` is a user's id (bound as the column's type: hex on SQLite, uuid on PostgreSQL)."""
    engine = create_engine(app_settings(app).resolved_database_url)
    statement = text(sql).bindparams(bindparam("id", type_=User.__table__.c.id.type))
    try:
        async with engine.begin() as connection:
            changed = (await connection.execute(statement, params)).rowcount
        assert changed == 1
    finally:
        await engine.dispose()


def said(response: httpx.Response) -> dict[str, Any]:
    """An answer's body, or its error's code as {"code": ...}."""
    if response.status_code >= 400:
        return {"code": error_code(response)}
    body: dict[str, Any] = response.json()
    return body


# What each change makes of the next request: who the user is (/auth/me), and the list of
# their uploads (a polled view: the list refuses an administrator, the policy; a temporary
# password, the full-use check).
CHANGES = [
    pytest.param(
        'UPDATE "user" SET token_version = token_version + 1 WHERE id = :id',
        (401, {"code": "session_ended"}),
        (401, {"code": "session_ended"}),
        id="signed-out-everywhere",
    ),
    pytest.param(
        'UPDATE "user" SET is_active = false WHERE id = :id',
        (401, {"code": "not_authenticated"}),
        (401, {"code": "not_authenticated"}),
        id="deactivated",
    ),
    pytest.param(
        'UPDATE "user" SET must_change_password = true WHERE id = :id',
        (200, {"must_change_password": True}),
        (403, {"code": "password_change_required"}),
        id="temporary-password",
    ),
    pytest.param(
        "UPDATE \"user\" SET role = 'admin' WHERE id = :id",
        (200, {"role": "admin"}),
        (403, {"code": "forbidden"}),
        id="made-admin",
    ),
]


class TestUserLoader:
    async def test_each_database_gets_its_loader(self, gateway: Gateway) -> None:
        assert type(app_state(gateway.app).user_loader) is gateway.loader

    async def test_an_unchanged_row_gives_the_same_object_and_a_changed_one_a_new_object(
        self, gateway: Gateway
    ) -> None:
        person = await make_user(gateway.app)
        rows = app_state(gateway.app).user_loader
        first = await rows.load(person.id)
        assert first is not None
        assert await rows.load(person.id) is first
        await another_process_writes(
            gateway.app,
            'UPDATE "user" SET email = :email WHERE id = :id',
            email="new@example.org",
            id=person.id,
        )
        changed = await rows.load(person.id)
        assert changed is not first
        assert changed is not None
        assert changed.email == "new@example.org"
        assert first.email is None  # the object handed out before is never written to

    @pytest.mark.parametrize(("sql", "me", "uploads"), CHANGES)
    async def test_a_change_by_another_process_counts_on_the_next_request(
        self,
        gateway: Gateway,
        sql: str,
        me: tuple[int, dict[str, Any]],
        uploads: tuple[int, dict[str, Any]],
    ) -> None:
        person = await make_user(gateway.app, role=Role.CLINICIAN)
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            headers = bearer((await signed_in(client, person))["access_token"])
            for _ in range(3):  # the row is known now
                before = await client.get(f"{API}/auth/me", headers=headers)
                assert before.status_code == 200, before.text
                assert before.json()["role"] == "clinician"
                listed = await client.get(f"{API}/uploads", headers=headers)
                assert listed.status_code == 200, listed.text
            await another_process_writes(gateway.app, sql, id=person.id)
            after_me = await client.get(f"{API}/auth/me", headers=headers)
            after_uploads = await client.get(f"{API}/uploads", headers=headers)
        for answer, (status, expected) in ((after_me, me), (after_uploads, uploads)):
            assert answer.status_code == status, answer.text
            assert expected.items() <= said(answer).items(), answer.text

    async def test_a_deleted_user_is_gone_at_once(self, gateway: Gateway) -> None:
        person = await make_user(gateway.app)
        rows = app_state(gateway.app).user_loader
        assert await rows.load(person.id) is not None
        await another_process_writes(gateway.app, 'DELETE FROM "user" WHERE id = :id', id=person.id)
        assert await rows.load(person.id) is None


@asynccontextmanager
async def held_whole(app: FastAPI) -> AsyncIterator[None]:
    """Another connection holds the whole SQLite file: in EXCLUSIVE locking mode, after a write,
    it keeps its lock until it closes (as a maintenance tool may). It can take that lock only
    while no other connection is open (in WAL mode nothing less stops a read): the gateway's
    are closed first, as after a restart or once its pools have recycled them."""
    db = app_state(app).db
    await db.engine.dispose()
    for engine in (db.sync_engine, db.lookup_engine):
        assert engine is not None
        engine.dispose()
    database = app_settings(app).resolved_database_url.split("///", 1)[1]
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute('UPDATE "user" SET email = email')
        holder.execute("COMMIT")  # the lock stays
        yield
    finally:
        holder.close()


class TestLockedSqlite:
    """The user of a request is waited for a short while (relaypacs.db.LOOKUP_BUSY_SECONDS)
    when another connection holds the database, then the request is refused: 503
    `database_busy` with Retry-After, where it waited for the writers' busy timeout (60 s) and
    then failed with a 500."""

    @pytest.fixture
    async def sqlite_app(self, tmp_path: Path) -> AsyncIterator[FastAPI]:
        url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        settings = identity_settings(
            tmp_path, url, totp_required_roles=[], scheduler=False, forward_worker=False
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            yield app

    async def test_a_request_is_refused_with_a_503_and_served_once_the_lock_is_gone(
        self, sqlite_app: FastAPI
    ) -> None:
        person = await make_user(sqlite_app)
        transport = httpx.ASGITransport(app=sqlite_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            headers = bearer((await signed_in(client, person))["access_token"])
            assert (await client.get(f"{API}/auth/me", headers=headers)).status_code == 200
            async with held_whole(sqlite_app):
                refused = [
                    await client.get(f"{API}/auth/me", headers=headers),
                    await client.get(f"{API}/uploads", headers=headers),  # ReadRoute
                ]
            after = await client.get(f"{API}/auth/me", headers=headers)
        for answer in refused:
            assert answer.status_code == 503, answer.text
            assert error_code(answer) == "database_busy"
            assert answer.headers["retry-after"] == "2"
        assert after.status_code == 200, after.text

    async def test_a_user_not_yet_known_is_refused_the_same(self, sqlite_app: FastAPI) -> None:
        rows = app_state(sqlite_app).user_loader
        async with held_whole(sqlite_app):
            with pytest.raises(DatabaseBusy):
                await rows.load(uuid.uuid4())  # a user never read: the ORM path
