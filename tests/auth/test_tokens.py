"""Forged and misused tokens: every one is a 401."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from relaypacs.auth import security
from relaypacs.auth.models import Role
from relaypacs.errors import NotAuthenticated
from relaypacs.state import app_state
from tests.auth.conftest import API, bearer, enrol, error_code, make_user, signed_in

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PUBLIC_PEM = _RSA.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def _claims(user_id: str, session_id: str, version: int, **changes: object) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, object] = {
        "iss": security.ISSUER,
        "aud": security.AUDIENCE,
        "sub": user_id,
        "sid": session_id,
        "ver": version,
        "role": "admin",
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(minutes=5),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256_with_public_key(claims: dict[str, object]) -> str:
    # PyJWT itself refuses a PEM as an HMAC secret; an attacker would sign by hand.
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = {
        k: int(v.timestamp()) if isinstance(v, dt.datetime) else v for k, v in claims.items()
    }
    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        + "."
        + b64(json.dumps(payload).encode())
    )
    signature = hmac.new(_PUBLIC_PEM, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


FORGERIES = [
    "alg_none",
    "rs256_signed",
    "hs256_with_public_key",
    "wrong_key",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "refresh_typ",
    "mfa_pending_typ",
    "no_sid",
    "old_version",
    "garbage",
]


class TestForgedAccessTokens:
    @pytest.mark.parametrize("forgery", FORGERIES)
    async def test_is_401(self, app: FastAPI, client: httpx.AsyncClient, forgery: str) -> None:
        person = await make_user(app, Role.CLINICIAN)
        tokens = await signed_in(client, person)
        real = security.decode_access_token(tokens["access_token"], key=app_state(app).signing_key)
        uid, sid, ver = str(person.id), str(real.session_id), real.version
        key = app_state(app).signing_key
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        earlier = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        forge: dict[str, Callable[[], str]] = {
            "alg_none": lambda: jwt.encode(
                _claims(uid, sid, ver),
                None,  # type: ignore[arg-type]
                algorithm="none",
            ),
            "rs256_signed": lambda: jwt.encode(_claims(uid, sid, ver), _RSA, algorithm="RS256"),
            "hs256_with_public_key": lambda: _hs256_with_public_key(_claims(uid, sid, ver)),
            "wrong_key": lambda: jwt.encode(_claims(uid, sid, ver), "k" * 40, "HS256"),
            "expired": lambda: jwt.encode(
                _claims(uid, sid, ver, exp=earlier, iat=earlier, nbf=earlier), key, "HS256"
            ),
            "not_yet_valid": lambda: jwt.encode(_claims(uid, sid, ver, nbf=later), key, "HS256"),
            "wrong_audience": lambda: jwt.encode(_claims(uid, sid, ver, aud="x"), key, "HS256"),
            "wrong_issuer": lambda: jwt.encode(_claims(uid, sid, ver, iss="x"), key, "HS256"),
            "refresh_typ": lambda: jwt.encode(_claims(uid, sid, ver, typ="refresh"), key, "HS256"),
            "mfa_pending_typ": lambda: jwt.encode(
                _claims(uid, sid, ver, typ=security.MFA_PENDING), key, "HS256"
            ),
            "no_sid": lambda: jwt.encode(_claims(uid, sid, ver, sid=None), key, "HS256"),
            "old_version": lambda: jwt.encode(_claims(uid, sid, ver - 1), key, "HS256"),
            "garbage": lambda: "not.a.token",
        }
        token = forge[forgery]()
        response = await client.get(f"{API}/auth/me", headers=bearer(token))
        assert response.status_code == 401, (forgery, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        # The genuine token of the same user still works: the refusals are the forgeries'.
        genuine = await client.get(f"{API}/auth/me", headers=bearer(tokens["access_token"]))
        assert genuine.status_code == 200

    async def test_refresh_token_is_not_an_access_token(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        tokens = await signed_in(client, await make_user(app))
        response = await client.get(f"{API}/auth/me", headers=bearer(tokens["refresh_token"]))
        assert response.status_code == 401

    async def test_mfa_pending_token_is_not_an_access_token(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app, Role.RADIOLOGIST)
        tokens = await signed_in(client, person)
        await enrol(client, tokens["access_token"])
        step_one = await client.post(
            f"{API}/auth/login", json={"username": person.username, "password": person.password}
        )
        assert step_one.status_code == 200
        assert step_one.json()["mfa_required"] is True
        assert step_one.json()["access_token"] is None
        mfa_token = step_one.json()["mfa_token"]
        for path in ("/auth/me", "/uploads"):
            response = await client.get(f"{API}{path}", headers=bearer(mfa_token))
            assert response.status_code == 401, path
            assert error_code(response) == "not_authenticated"


class TestVerifiedTokenCache:
    """decode_access_token keeps the tokens it verified: a kept token must still die at its
    time, and a string that differs in any way must get the full check."""

    def _token(self, lifetime: dt.timedelta) -> str:
        token, _ = security.create_access_token(
            user_id=uuid.uuid4(),
            role=Role.CLINICIAN,
            session_id=uuid.uuid4(),
            version=0,
            key="k" * 40,
            lifetime=lifetime,
        )
        return token

    def test_a_kept_token_expires(self, monkeypatch: pytest.MonkeyPatch) -> None:
        token = self._token(dt.timedelta(seconds=30))
        claims = security.decode_access_token(token, key="k" * 40)
        assert security.decode_access_token(token, key="k" * 40) is claims  # from the cache
        later = time.time() + 30 + 6  # past exp and the 5 s leeway
        monkeypatch.setattr(time, "time", lambda: later)
        with pytest.raises(NotAuthenticated, match="expired"):
            security.decode_access_token(token, key="k" * 40)

    def test_a_kept_token_is_not_valid_before_its_time(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        token = self._token(dt.timedelta(minutes=15))
        security.decode_access_token(token, key="k" * 40)
        earlier = time.time() - 60
        monkeypatch.setattr(time, "time", lambda: earlier)
        with pytest.raises(NotAuthenticated):
            security.decode_access_token(token, key="k" * 40)

    def test_another_key_or_a_changed_string_gets_the_full_check(self) -> None:
        token = self._token(dt.timedelta(minutes=15))
        security.decode_access_token(token, key="k" * 40)
        with pytest.raises(NotAuthenticated):
            security.decode_access_token(token, key="other" * 8)
        head, payload, signature = token.split(".")
        flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
        with pytest.raises(NotAuthenticated):
            security.decode_access_token(f"{head}.{payload}.{flipped}", key="k" * 40)
