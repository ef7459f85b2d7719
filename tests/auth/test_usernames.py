"""A username is one name however it is typed: `ADMIN` cannot be created beside `admin`, and
signs in as it (NFKC + case folding, relaypacs.fields.name_key). Accounts that collided before
migration 0006 keep signing in with their exact names."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from relaypacs import migrate
from relaypacs.auth.models import Role
from relaypacs.auth.security import hash_password
from relaypacs.db import create_engine
from relaypacs.fields import name_key
from relaypacs.main import create_app
from tests.auth.conftest import (
    API,
    PASSWORD,
    Person,
    error_code,
    identity_settings,
    login,
    make_user,
)
from tests.auth.test_admin_users import admin_token  # noqa: F401 (a fixture)


def variants(username: str) -> list[str]:
    full_width = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in username)
    return [username.upper(), username.capitalize(), full_width]


class TestOneNameHoweverTyped:
    async def test_a_case_or_width_variant_cannot_be_created(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        admin_token: str,  # noqa: F811
    ) -> None:
        existing = await make_user(app)
        for variant in variants(existing.username):
            assert variant != existing.username
            answer = await client.post(
                f"{API}/admin/users",
                json={"username": variant, "role": "clinician"},
                headers={"Authorization": f"Bearer {admin_token}"},
            )
            assert answer.status_code in (409, 422), (variant, answer.text)
            if answer.status_code == 409:
                assert error_code(answer) == "username_taken"

    async def test_a_variant_signs_in_as_the_account(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        me = None
        for variant in variants(person.username)[:2]:
            answer = await login(client, Person(person.id, variant, person.role))
            assert answer.status_code == 200, answer.text
            token = answer.json()["access_token"]
            me = await client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert me.json()["username"] == person.username


async def test_accounts_that_collided_before_0006_keep_their_exact_names(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'users.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0005")
    users = sa.table(
        "user",
        sa.column("id", sa.Uuid),
        sa.column("username", sa.String),
        sa.column("password_hash", sa.Text),
        sa.column("role", sa.String),
        sa.column("is_active", sa.Boolean),
        sa.column("must_change_password", sa.Boolean),
        sa.column("totp_enabled", sa.Boolean),
        sa.column("token_version", sa.Integer),
        sa.column("created_at", sa.DateTime),
        sa.column("updated_at", sa.DateTime),
    )
    older, newer = uuid.uuid4(), uuid.uuid4()
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for user_id, name, when in ((older, "bob", "2026-01-01"), (newer, "BOB", "2026-02-01")):
                at = sa.func.datetime(when)
                await connection.execute(
                    users.insert().values(
                        id=user_id,
                        username=name,
                        password_hash=hash_password(PASSWORD),
                        role="clinician",
                        is_active=True,
                        must_change_password=False,
                        totp_enabled=False,
                        token_version=0,
                        created_at=at,
                        updated_at=at,
                    )
                )
    finally:
        await engine.dispose()
    await asyncio.to_thread(migrate.upgrade, url)
    app = create_app(identity_settings(tmp_path / "data", url, totp_required_roles=[]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.9.9.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://gw") as client:
            signed_in = {}
            for typed in ("bob", "BOB", "Bob"):
                answer = await login(client, Person(older, typed, Role.CLINICIAN))
                assert answer.status_code == 200, answer.text
                me = await client.get(
                    f"{API}/auth/me",
                    headers={"Authorization": f"Bearer {answer.json()['access_token']}"},
                )
                signed_in[typed] = me.json()["id"]
    # The exact name finds each account; another spelling finds the older one.
    assert signed_in == {"bob": str(older), "BOB": str(newer), "Bob": str(older)}
    assert name_key("BOB") == "bob"


@pytest.mark.parametrize("name", ["ADMIN", "Admin", "\uff41\uff44\uff4d\uff49\uff4e"])
def test_the_key_folds_case_and_width(name: str) -> None:
    assert name_key(name) == "admin"
