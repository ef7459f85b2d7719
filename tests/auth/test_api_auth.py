"""Login, access tokens and the first administrator, on the upload tests' app (tests/api): its
fixtures are imported here, and replace the identity tests' `app` and `client` in this module."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from relaypacs.audit.models import AuditEvent
from relaypacs.auth import security
from relaypacs.auth.models import Role, User
from relaypacs.auth.service import ensure_first_admin
from relaypacs.state import app_state
from tests.api import conftest as upload_tests
from tests.api.conftest import PASSWORD, Account, MakeAccount
from tests.api.uploading import API, error_code

# The fixtures of the upload tests' app, in place of this directory's `app` and `client`.
app = upload_tests.app
client = upload_tests.client
make_account = upload_tests.make_account
clinician = upload_tests.clinician


class TestLogin:
    async def test_login_returns_a_working_access_token(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        me = await client.get(f"{API}/auth/me", headers=clinician.headers)
        assert me.status_code == 200
        assert me.json()["username"] == clinician.username
        assert me.json()["role"] == "clinician"
        assert "password_hash" not in me.json()

    @pytest.mark.parametrize("known_user", [True, False])
    async def test_wrong_credentials_are_401_and_audited(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account, known_user: bool
    ) -> None:
        username = clinician.username if known_user else "nobody-" + uuid.uuid4().hex[:6]
        response = await client.post(
            f"{API}/auth/login", json={"username": username, "password": "wrong password!"}
        )
        assert response.status_code == 401
        assert error_code(response) == "invalid_credentials"
        async with app_state(app).db.read_sessionmaker() as session, session.begin():
            user = await session.scalar(select(User).where(User.username == clinician.username))
            assert user is not None
            outcomes = list(
                await session.scalars(
                    select(AuditEvent.outcome).where(
                        AuditEvent.action == "auth.login", AuditEvent.actor_id == user.id
                    )
                )
            )
        assert outcomes == (["success", "failure"] if known_user else ["success"])

    async def test_disabled_user_cannot_log_in_and_its_token_stops_working(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        async with app_state(app).db.sessionmaker() as session, session.begin():
            user = await session.scalar(select(User).where(User.username == clinician.username))
            assert user is not None
            user.is_active = False
        login = await client.post(
            f"{API}/auth/login", json={"username": clinician.username, "password": PASSWORD}
        )
        assert login.status_code == 401
        me = await client.get(f"{API}/auth/me", headers=clinician.headers)
        assert me.status_code == 401


class TestForgedTokens:
    def _claims(self, account_id: str, session_id: str, **changes: object) -> dict[str, object]:
        now = dt.datetime.now(dt.UTC)
        claims: dict[str, object] = {
            "iss": security.ISSUER,
            "aud": security.AUDIENCE,
            "sub": account_id,
            "sid": session_id,
            "ver": 0,
            "role": "admin",
            "typ": "access",
            "jti": "x",
            "iat": now,
            "nbf": now,
            "exp": now + dt.timedelta(minutes=5),
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    @pytest.mark.parametrize(
        "forge",
        [
            "alg_none",
            "wrong_key",
            "expired",
            "not_yet_valid",
            "wrong_audience",
            "wrong_issuer",
            "refresh_type",
            "garbage",
            "no_sub",
        ],
    )
    async def test_forged_tokens_are_401(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount, forge: str
    ) -> None:
        admin = await make_account(Role.ADMIN)
        me = await client.get(f"{API}/auth/me", headers=admin.headers)
        account_id = me.json()["id"]
        sid = security.decode_access_token(admin.token, key=app_state(app).signing_key).session_id
        key = app_state(app).signing_key
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        earlier = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        tokens: dict[str, Callable[[], str]] = {
            "alg_none": lambda: jwt.encode(
                self._claims(account_id, str(sid)),
                None,  # type: ignore[arg-type]
                algorithm="none",
            ),
            "wrong_key": lambda: jwt.encode(
                self._claims(account_id, str(sid)), "k" * 40, algorithm="HS256"
            ),
            "expired": lambda: jwt.encode(
                self._claims(account_id, str(sid), exp=earlier, iat=earlier, nbf=earlier),
                key,
                "HS256",
            ),
            "not_yet_valid": lambda: jwt.encode(
                self._claims(account_id, str(sid), nbf=later), key, "HS256"
            ),
            "wrong_audience": lambda: jwt.encode(
                self._claims(account_id, str(sid), aud="x"), key, "HS256"
            ),
            "wrong_issuer": lambda: jwt.encode(
                self._claims(account_id, str(sid), iss="x"), key, "HS256"
            ),
            "refresh_type": lambda: jwt.encode(
                self._claims(account_id, str(sid), typ="refresh"), key, "HS256"
            ),
            "garbage": lambda: "not.a.token",
            "no_sub": lambda: jwt.encode(
                self._claims(account_id, str(sid), sub=None), key, "HS256"
            ),
        }
        response = await client.get(
            f"{API}/auth/me", headers={"Authorization": f"Bearer {tokens[forge]()}"}
        )
        assert response.status_code == 401, forge
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_a_valid_token_of_the_same_shape_works(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        me = await client.get(f"{API}/auth/me", headers=clinician.headers)
        sid = security.decode_access_token(
            clinician.token, key=app_state(app).signing_key
        ).session_id
        token = jwt.encode(
            self._claims(me.json()["id"], str(sid)), app_state(app).signing_key, "HS256"
        )
        response = await client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


class TestFirstAdmin:
    async def test_created_once_with_a_random_password(self, app: FastAPI) -> None:
        # The app's start already created it (users existed or not); a second call is a no-op.
        assert await ensure_first_admin(app_state(app).db.sessionmaker) is None
        async with app_state(app).db.read_sessionmaker() as session, session.begin():
            admin = await session.scalar(select(User).where(User.username == "admin"))
        assert admin is not None
        assert admin.role == Role.ADMIN
        assert admin.password_hash.startswith("$argon2id$")
        assert not security.verify_password(admin.password_hash, "admin")
