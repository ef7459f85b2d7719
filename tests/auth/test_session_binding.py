"""An access token's session must exist, be live and belong to the token's user, in every mode
of the revocation store: embedded (memory), Redis, database only. (With a leaked signing key, a
token naming user B and user A's live session, or a session that never was, was accepted with
Redis configured; the database-only mode already refused the second.)"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from relaypacs.auth import security
from relaypacs.auth.models import Role
from relaypacs.main import create_app
from relaypacs.state import app_state
from tests.auth.conftest import (
    API,
    REDIS_URL,
    bearer,
    client_for,
    identity_settings,
    make_user,
    redis_prefix,
    signed_in,
)

MODES = ["memory", "redis", "database"]


@pytest.fixture(scope="module", params=MODES)
async def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    options: dict[str, Any] = {"totp_required_roles": []}
    if request.param == "memory":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('binding') / 'db.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
        if request.param == "redis":
            options.update(redis_url=REDIS_URL, redis_prefix=redis_prefix())
    application = create_app(identity_settings(tmp_path_factory.mktemp("data"), url, **options))
    async with application.router.lifespan_context(application):
        yield application


def forged(app: FastAPI, *, user_id: uuid.UUID | str, session_id: uuid.UUID | str) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "iss": security.ISSUER,
        "aud": security.AUDIENCE,
        "sub": str(user_id),
        "sid": str(session_id),
        "ver": 0,
        "role": "clinician",
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(minutes=5),
    }
    return jwt.encode(claims, app_state(app).signing_key, "HS256")


def session_of(app: FastAPI, token: str) -> uuid.UUID:
    return security.decode_access_token(token, key=app_state(app).signing_key).session_id


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(f"{API}/auth/me", headers=bearer(token))


async def test_a_token_of_the_right_shape_works(app: FastAPI) -> None:
    """The control: the same forgery with the user's own live session passes."""
    person = await make_user(app, Role.CLINICIAN)
    async with client_for(app) as client:
        token = (await signed_in(client, person))["access_token"]
        own = forged(app, user_id=person.id, session_id=session_of(app, token))
        assert (await me(client, own)).status_code == 200


async def test_a_session_that_never_was_is_refused(app: FastAPI) -> None:
    person = await make_user(app, Role.CLINICIAN)
    async with client_for(app) as client:
        await signed_in(client, person)  # the user has a live session, just not this one
        answer = await me(client, forged(app, user_id=person.id, session_id=uuid.uuid4()))
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "session_ended"


async def test_another_users_live_session_is_refused(app: FastAPI) -> None:
    a = await make_user(app, Role.CLINICIAN)
    b = await make_user(app, Role.CLINICIAN)
    async with client_for(app) as client:
        a_token = (await signed_in(client, a))["access_token"]
        await signed_in(client, b)
        borrowed = forged(app, user_id=b.id, session_id=session_of(app, a_token))
        answer = await me(client, borrowed)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "session_ended"
        assert (await me(client, a_token)).status_code == 200  # A's own token still works


async def test_a_session_from_before_a_restart_still_works(
    app: FastAPI, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A session the store has not seen (issued by another process, or before a restart) is
    looked up in the database, once, and then known."""
    person = await make_user(app, Role.CLINICIAN)
    async with client_for(app) as client:
        token = (await signed_in(client, person))["access_token"]
    settings = app_state(app).settings
    other = create_app(settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("again")}))
    async with other.router.lifespan_context(other), client_for(other) as client:
        assert (await me(client, token)).status_code == 200
        assert (await me(client, token)).status_code == 200
