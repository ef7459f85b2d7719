"""The gateway app for the identity tests: on SQLite in embedded mode (revocations and rate
limits in memory), on PostgreSQL with the real Redis (its own key prefix per app)."""

from __future__ import annotations

import datetime as dt
import os
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.models import Role, User
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.main import create_app
from relaypacs.state import app_state
from tests.conftest import unique_name

API = "/api/v1"
PASSWORD = "correct horse battery staple"
REDIS_URL = os.environ.get("RELAYPACS_TEST_REDIS", "redis://127.0.0.1:6379/0")
SIGNING_KEY = "identity-test-signing-key-" + "y" * 32
TOTP_STEP_SECONDS = 30  # pyotp's default, as the gateway's


def identity_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "secret_key": SIGNING_KEY,
        "dicom_workers": 1,
        # Small limits, so that the tests reach them quickly.
        "rate_limit_login_ip": "20/minute",
        "rate_limit_login_account_ip": "3/minute",
        "rate_limit_login_account": "10/minute",
        "rate_limit_totp_ip": "20/minute",
        "rate_limit_totp_account": "3/minute",
    }
    options.update(overrides)
    return Settings(**options)


def redis_prefix() -> str:
    return f"relaypacs-test-{secrets.token_hex(4)}:"


@pytest.fixture(scope="module")
async def app(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    redis: dict[str, Any] = {}
    if database_url.startswith("postgresql"):
        redis = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix()}
    settings = identity_settings(tmp_path_factory.mktemp("identity"), database_url, **redis)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def random_ip() -> str:
    """Each test comes from its own address: per-address limits don't leak between tests."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def client_for(app: FastAPI, ip: str | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip or random_ip(), 40000))
    return httpx.AsyncClient(transport=transport, base_url="https://gateway")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


@dataclass
class Person:
    id: uuid.UUID
    username: str
    role: Role
    password: str = PASSWORD


async def make_user(
    app: FastAPI, role: Role = Role.CLINICIAN, *, must_change_password: bool = False
) -> Person:
    username = unique_name(role.value)
    async with app_state(app).db.sessionmaker() as session, session.begin():
        user = await create_user(
            session,
            username=username,
            password=PASSWORD,
            role=role,
            must_change_password=must_change_password,
        )
    return Person(user.id, username, role)


async def login(
    client: httpx.AsyncClient, person: Person, password: str | None = None, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"{API}/auth/login",
        json={"username": person.username, "password": password or person.password, **extra},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def signed_in(client: httpx.AsyncClient, person: Person) -> dict[str, Any]:
    response = await login(client, person, refresh_in_body=True)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["access_token"]
    return body


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def totp_code(secret: str, steps: int = 0) -> str:
    """The code of the current time step, or `steps` away (the drift window allows one)."""
    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(dt.datetime.fromtimestamp(time.time(), dt.UTC)) + steps)


def previous_step_code(secret: str, margin: float = 2.0) -> str:
    """The previous time step's code, which leaves the current and the next for later logins.
    Taken away from a step change: a code of step N-1 taken at the end of step N and checked
    at step N+1 is two steps away, which the server refuses; so within `margin` seconds of the
    next step, this waits for it first."""
    left = TOTP_STEP_SECONDS - time.time() % TOTP_STEP_SECONDS
    if left < margin:
        time.sleep(left + 0.05)
    return totp_code(secret, -1)


def wrong_code(secret: str) -> str:
    """A well-formed code that is none of the window's (current, previous, next step)."""
    valid = {totp_code(secret, step) for step in (-1, 0, 1, 2)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444") if c not in valid)


async def enrol(client: httpx.AsyncClient, token: str) -> tuple[str, list[str]]:
    """Enrol TOTP; the confirming code is the previous step's, leaving the current one (and
    the next) for the tests' logins."""
    started = await client.post(
        f"{API}/auth/totp/enrol", json={"password": PASSWORD}, headers=bearer(token)
    )
    assert started.status_code == 200, started.text
    secret: str = started.json()["secret"]
    confirmed = await client.post(
        f"{API}/auth/totp/confirm", json={"code": previous_step_code(secret)}, headers=bearer(token)
    )
    assert confirmed.status_code == 200, confirmed.text
    codes: list[str] = confirmed.json()["recovery_codes"]
    return secret, codes


async def audit_rows(
    app: FastAPI, *, actor_id: uuid.UUID | None = None, object_id: uuid.UUID | None = None
) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.id)
    if actor_id is not None:
        query = query.where(AuditEvent.actor_id == actor_id)
    if object_id is not None:
        query = query.where(AuditEvent.object_id == str(object_id))
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        return list(await session.scalars(query))


async def actions(app: FastAPI, **where: Any) -> list[tuple[str, str]]:
    return [(row.action, row.outcome) for row in await audit_rows(app, **where)]


async def user_row(app: FastAPI, user_id: uuid.UUID) -> User:
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        user: User | None = await session.get(User, user_id)
    assert user is not None
    return user
