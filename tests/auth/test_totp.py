"""TOTP: enrolment, two-step login, single-use codes, recovery codes, rate limits, secrecy at
rest."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from relaypacs.auth.models import RecoveryCode, Role
from relaypacs.state import app_state
from tests.auth.conftest import (
    API,
    Person,
    actions,
    bearer,
    enrol,
    error_code,
    login,
    make_user,
    previous_step_code,
    signed_in,
    totp_code,
    user_row,
    wrong_code,
)


async def _password_step(client: httpx.AsyncClient, person: Person) -> str:
    response = await login(client, person)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mfa_required"] is True
    assert body["access_token"] is None
    assert body["refresh_token"] is None
    token: str = body["mfa_token"]
    return token


async def _second_step(client: httpx.AsyncClient, mfa_token: str, **factor: Any) -> httpx.Response:
    return await client.post(
        f"{API}/auth/totp", json={"mfa_token": mfa_token, "refresh_in_body": True, **factor}
    )


async def _enrolled(app: FastAPI, client: httpx.AsyncClient) -> tuple[Person, str, list[str]]:
    person = await make_user(app, Role.RADIOLOGIST)
    tokens = await signed_in(client, person)
    secret, codes = await enrol(client, tokens["access_token"])
    return person, secret, codes


class TestEnrolment:
    async def test_uri_qr_code_and_confirmation(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app, Role.CLINICIAN)
        token = (await signed_in(client, person))["access_token"]
        stolen = await client.post(
            f"{API}/auth/totp/enrol", json={"password": "a guess"}, headers=bearer(token)
        )
        assert stolen.status_code == 400  # a stolen access token alone cannot enrol
        assert error_code(stolen) == "wrong_password"
        assert (await user_row(app, person.id)).totp_secret is None
        started = await client.post(
            f"{API}/auth/totp/enrol", json={"password": person.password}, headers=bearer(token)
        )
        assert started.status_code == 200
        assert started.headers["cache-control"] == "no-store"
        body = started.json()
        secret = body["secret"]
        parsed = pyotp.parse_uri(body["otpauth_uri"])
        assert body["otpauth_uri"].startswith("otpauth://totp/")
        assert isinstance(parsed, pyotp.TOTP)
        assert parsed.secret == secret
        assert person.username in body["otpauth_uri"]
        prefix = "data:image/svg+xml;base64,"
        assert body["qr_code"].startswith(prefix)
        assert b"<svg" in base64.b64decode(body["qr_code"][len(prefix) :])
        # Not on until confirmed: login still has one step.
        assert (await login(client, person)).json()["mfa_required"] is False
        wrong = await client.post(
            f"{API}/auth/totp/confirm", json={"code": wrong_code(secret)}, headers=bearer(token)
        )
        assert wrong.status_code == 400
        assert error_code(wrong) == "invalid_totp_code"
        confirmed = await client.post(
            f"{API}/auth/totp/confirm", json={"code": totp_code(secret)}, headers=bearer(token)
        )
        assert confirmed.status_code == 200, confirmed.text
        codes = confirmed.json()["recovery_codes"]
        assert len(codes) == 10
        assert len(set(codes)) == 10
        again = await client.post(
            f"{API}/auth/totp/enrol", json={"password": person.password}, headers=bearer(token)
        )
        assert again.status_code == 409
        assert error_code(again) == "totp_already_enabled"
        assert [a for a in await actions(app, actor_id=person.id) if "totp" in a[0]] == [
            ("auth.totp_enrol", "failure"),
            ("auth.totp_enrol", "success"),
            ("auth.totp_failure", "failure"),
            ("auth.totp_confirm", "success"),
        ]

    async def test_secret_and_recovery_codes_are_not_stored_in_plain_text(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person, secret, codes = await _enrolled(app, client)
        user = await user_row(app, person.id)
        assert user.totp_enabled
        assert user.totp_secret is not None
        assert secret not in user.totp_secret
        assert secret.lower() not in user.totp_secret.lower()
        assert app_state(app).totp_cipher.decrypt(user.totp_secret) == secret
        async with app_state(app).db.read_sessionmaker() as session, session.begin():
            stored = list(
                await session.scalars(
                    select(RecoveryCode.code_hash).where(RecoveryCode.user_id == person.id)
                )
            )
        assert len(stored) == 10
        plain = {c.replace("-", "") for c in codes} | set(codes)
        assert not plain & set(stored)


class TestTwoStepLogin:
    async def test_code_gives_tokens_and_cannot_be_replayed(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person, secret, _ = await _enrolled(app, client)
        code = totp_code(secret)
        mfa_token = await _password_step(client, person)
        ok = await _second_step(client, mfa_token, code=code)
        assert ok.status_code == 200, ok.text
        me = await client.get(f"{API}/auth/me", headers=bearer(ok.json()["access_token"]))
        assert me.status_code == 200
        assert me.json()["totp_enabled"] is True
        # The same code again, even with a fresh password step, within its window: refused.
        replay = await _second_step(client, await _password_step(client, person), code=code)
        assert replay.status_code == 401
        assert error_code(replay) == "invalid_totp_code"
        # The next step's code (clock drift of one step) still works once.
        later = await _second_step(client, mfa_token, code=totp_code(secret, 1))
        assert later.status_code == 200
        audit = await actions(app, actor_id=person.id)
        assert ("auth.totp_failure", "failure") in audit
        assert audit.count(("auth.mfa_challenge", "success")) == 2  # right passwords
        # The enrolment's session, then the two completed second steps.
        assert audit.count(("auth.login", "success")) == 3

    async def test_recovery_code_works_once(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        person, _, codes = await _enrolled(app, client)
        mfa_token = await _password_step(client, person)
        first = await _second_step(client, mfa_token, recovery_code=codes[3].upper())
        assert first.status_code == 200, first.text
        second = await _second_step(client, mfa_token, recovery_code=codes[3])
        assert second.status_code == 401
        assert error_code(second) == "invalid_totp_code"
        other = await _second_step(client, mfa_token, recovery_code=codes[4])
        assert other.status_code == 200

    async def test_code_and_recovery_code_together_or_neither_are_422(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person, secret, codes = await _enrolled(app, client)
        mfa_token = await _password_step(client, person)
        both = await _second_step(client, mfa_token, code=totp_code(secret), recovery_code=codes[0])
        assert both.status_code == 422
        assert (await _second_step(client, mfa_token)).status_code == 422

    async def test_access_token_is_not_an_mfa_token(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person, secret, _ = await _enrolled(app, client)
        access = (await signed_in_with_totp(client, person, secret))["access_token"]
        response = await _second_step(client, access, code=totp_code(secret, 1))
        assert response.status_code == 401

    async def test_wrong_codes_are_rate_limited(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person, secret, _ = await _enrolled(app, client)
        mfa_token = await _password_step(client, person)
        wrong = wrong_code(secret)
        statuses = [
            (await _second_step(client, mfa_token, code=wrong)).status_code for _ in range(3)
        ]
        assert statuses == [401, 401, 401]
        limited = await _second_step(client, mfa_token, code=wrong)
        assert limited.status_code == 429
        assert error_code(limited) == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        # Even the right code waits: the limit is per account, whatever the guess.
        right = await _second_step(client, mfa_token, code=totp_code(secret))
        assert right.status_code == 429
        failures = [
            a for a in await actions(app, actor_id=person.id) if a[0] == "auth.totp_failure"
        ]
        assert len(failures) >= 4

    async def test_admin_reset_removes_totp_and_is_audited(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        admin, admin_secret, _ = await _enrolled_admin(app, client)
        person, _, _ = await _enrolled(app, client)
        admin_token = (await signed_in_with_totp(client, admin, admin_secret))["access_token"]
        reset = await client.delete(
            f"{API}/admin/users/{person.id}/totp", headers=bearer(admin_token)
        )
        assert reset.status_code == 200, reset.text
        assert reset.json()["totp_enabled"] is False
        user = await user_row(app, person.id)
        assert user.totp_secret is None
        # Back to one step, with enrolment required again (radiologist).
        again = await login(client, person)
        assert again.json()["mfa_required"] is False
        assert again.json()["totp_enrolment_required"] is True
        assert ("admin.user_totp_reset", "success") in await actions(app, object_id=person.id)


async def signed_in_with_totp(
    client: httpx.AsyncClient, person: Person, secret: str
) -> dict[str, Any]:
    mfa_token = await _password_step(client, person)
    response = await _second_step(client, mfa_token, code=totp_code(secret))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _enrolled_admin(app: FastAPI, client: httpx.AsyncClient) -> tuple[Person, str, list[str]]:
    person = await make_user(app, Role.ADMIN)
    tokens = await signed_in(client, person)
    secret, codes = await enrol(client, tokens["access_token"])
    return person, secret, codes


class TestWrongEncryptionKey:
    async def test_a_secret_the_key_cannot_decrypt_is_a_clear_409(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        from cryptography.fernet import Fernet

        from relaypacs.auth.totp import TotpCipher

        person, secret, _ = await _enrolled(app, client)
        mfa_token = await _password_step(client, person)
        right_cipher = app_state(app).totp_cipher
        app_state(app).totp_cipher = TotpCipher(Fernet.generate_key().decode())  # a changed key
        try:
            response = await _second_step(client, mfa_token, code=totp_code(secret))
        finally:
            app_state(app).totp_cipher = right_cipher
        assert response.status_code == 409
        assert error_code(response) == "totp_reset_required"
        assert secret not in response.text


def test_the_previous_step_code_is_not_taken_at_a_step_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tests' enrolment helper (a code of the previous step) waits out the end of a step:
    taken then and checked after the change, the code is two steps old and refused."""
    clock = [1_800_000_000.0 + 29.2]  # 0.8 s before a step change
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", sleep)
    secret = pyotp.random_base32()
    code = previous_step_code(secret)
    assert len(slept) == 1
    assert 0.8 <= slept[0] < 1.0
    # The previous step of the new step: the one that ended just now.
    totp = pyotp.TOTP(secret)
    assert code == totp.generate_otp(int(clock[0]) // 30 - 1)
    clock[0] += 10.0  # mid-step: no wait
    slept.clear()
    previous_step_code(secret)
    assert slept == []
