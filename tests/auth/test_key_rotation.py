"""Key rotation without logging everyone out: the token signing key (new tokens name the new key
in their `kid`; tokens signed with a previous key are accepted until they expire, forged ones
never) and the TOTP encryption key (`relaypacs users rotate-totp-key` re-encrypts every stored
secret; idempotent, resumable; TOTP login works under the new key alone afterwards)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet, InvalidToken
from fastapi import FastAPI

from relaypacs.auth import security
from relaypacs.auth.models import Role
from relaypacs.errors import NotAuthenticated
from relaypacs.main import create_app
from relaypacs.state import app_state
from tests.auth.conftest import (
    API,
    Person,
    actions,
    bearer,
    client_for,
    enrol,
    error_code,
    identity_settings,
    login,
    make_user,
    signed_in,
    totp_code,
    user_row,
)
from tests.gateway import gateway_env, relaypacs_command

OLD_KEY = "rotation-test-old-signing-key-" + "o" * 32
NEW_KEY = "rotation-test-new-signing-key-" + "n" * 32


@contextlib.asynccontextmanager
async def gateway(
    data_dir: Path, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A gateway on the SQLite database in data_dir, with these settings; a later one on the
    same directory sees the same users and sessions (a restart with a new configuration)."""
    url = f"sqlite+aiosqlite:///{data_dir / 'relaypacs.db'}"
    app = create_app(identity_settings(data_dir, url, **overrides))
    async with app.router.lifespan_context(app), client_for(app) as client:
        yield app, client


def header_of(token: str) -> dict[str, Any]:
    header: dict[str, Any] = jwt.get_unverified_header(token)
    return header


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(f"{API}/auth/me", headers=bearer(token))


class TestSigningKeyRotation:
    async def test_tokens_of_the_old_key_live_on_forged_ones_do_not(self, tmp_path: Path) -> None:
        data_dir = tmp_path / "data"
        async with gateway(data_dir, secret_key=OLD_KEY, totp_required_roles=[]) as (app, client):
            person = await make_user(app, Role.CLINICIAN)
            before = await signed_in(client, person)
            old_token, refresh_token = before["access_token"], before["refresh_token"]
            assert header_of(old_token)["kid"] == security.key_id(OLD_KEY)
            # A token of the release before key ids: no kid in its header.
            no_kid = jwt.encode(claims_of(old_token), OLD_KEY, "HS256")
            assert "kid" not in header_of(no_kid)
            assert (await me(client, old_token)).status_code == 200

        # The rotation: a new key signs; the old one verifies what it signed.
        async with gateway(
            data_dir, secret_key=NEW_KEY, previous_secret_keys=[OLD_KEY], totp_required_roles=[]
        ) as (app, client):
            assert (await me(client, old_token)).status_code == 200
            assert (await me(client, no_kid)).status_code == 200
            fresh = (await signed_in(client, person))["access_token"]
            assert header_of(fresh)["kid"] == security.key_id(NEW_KEY)
            assert (await me(client, fresh)).status_code == 200
            with_new_key = jwt.decode(
                fresh, NEW_KEY, algorithms=["HS256"], audience=security.AUDIENCE
            )
            assert with_new_key["sub"] == str(person.id)

            claims = claims_of(old_token)
            attacker_key = "an-attacker-s-own-key-of-some-length-" + "x" * 16
            forged = {
                # names the old key, signed with another
                "old kid": jwt.encode(
                    claims, attacker_key, "HS256", headers={"kid": security.key_id(OLD_KEY)}
                ),
                # names the new key, signed with another
                "new kid": jwt.encode(
                    claims, attacker_key, "HS256", headers={"kid": security.key_id(NEW_KEY)}
                ),
                # no kid: every configured key is tried, none matches
                "no kid": jwt.encode(claims, attacker_key, "HS256"),
                # the right signature under a kid no key has
                "unknown kid": jwt.encode(
                    claims, NEW_KEY, "HS256", headers={"kid": "0123456789abcdef"}
                ),
                # a non-string kid
                "odd kid": _hs256({"alg": "HS256", "typ": "JWT", "kid": 7}, claims, NEW_KEY),
                # the old token's claims changed (another role), its signature kept
                "tampered": _with_claims(old_token, role="admin"),
                "alg none": _unsigned(claims, kid=security.key_id(OLD_KEY)),
                # a header that is not JSON, one nested past the parser's depth
                "bad header": "bm90IGpzb24." + old_token.split(".", 1)[1],
                "deep header": _part(b"[" * 20_000) + "." + old_token.split(".", 1)[1],
            }
            for what, token in forged.items():
                answer = await me(client, token)
                assert answer.status_code == 401, what
                assert error_code(answer) == "not_authenticated", what

        # The old key dropped (its tokens' lifetime is over): its tokens stop working, the
        # session does not: the refresh token is not signed and gets a new-key access token.
        async with gateway(data_dir, secret_key=NEW_KEY, totp_required_roles=[]) as (app, client):
            assert (await me(client, old_token)).status_code == 401
            assert (await me(client, no_kid)).status_code == 401
            refreshed = await client.post(
                f"{API}/auth/refresh", json={"refresh_token": refresh_token}
            )
            assert refreshed.status_code == 200, refreshed.text
            renewed = refreshed.json()["access_token"]
            assert header_of(renewed)["kid"] == security.key_id(NEW_KEY)
            assert (await me(client, renewed)).json()["username"] == person.username

    async def test_an_mfa_challenge_of_before_the_rotation_completes_after_it(
        self, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "data"
        totp_key = Fernet.generate_key().decode()
        async with gateway(data_dir, secret_key=OLD_KEY, totp_encryption_key=totp_key) as (
            app,
            client,
        ):
            person = await make_user(app, Role.ADMIN)
            secret, _ = await enrol(client, (await signed_in(client, person))["access_token"])
            challenge = (await login(client, person)).json()
            assert challenge["mfa_required"] is True
        async with gateway(
            data_dir,
            secret_key=NEW_KEY,
            previous_secret_keys=[OLD_KEY],
            totp_encryption_key=totp_key,
        ) as (app, client):
            done = await client.post(
                f"{API}/auth/totp",
                json={"mfa_token": challenge["mfa_token"], "code": totp_code(secret)},
            )
            assert done.status_code == 200, done.text
            assert header_of(done.json()["access_token"])["kid"] == security.key_id(NEW_KEY)

    def test_previous_keys_are_checked_like_the_key(self, tmp_path: Path) -> None:
        env = {
            "RELAYPACS_SECRET_KEY": NEW_KEY,
            "RELAYPACS_PREVIOUS_SECRET_KEYS": f"{OLD_KEY},too-short",
        }
        done = subprocess.run(
            [*relaypacs_command(), "db", "upgrade"],
            env=gateway_env(tmp_path / "data", env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2
        assert "RELAYPACS_PREVIOUS_SECRET_KEYS" in done.stderr
        assert "at least 32 characters" in done.stderr
        assert OLD_KEY not in done.stderr


def _with_claims(token: str, **changes: Any) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    raw = json.dumps(claims, separators=(",", ":")).encode()
    return f"{head}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}.{signature}"


def _part(value: dict[str, Any] | bytes) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any], *, kid: str) -> str:
    return f"{_part({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{_part(claims)}."


def _hs256(header: dict[str, Any], claims: dict[str, Any], key: str) -> str:
    """Signed by hand: PyJWT would not write this header."""
    signed = f"{_part(header)}.{_part(claims)}"
    signature = hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_part(signature)}"


def rotate_totp_key(
    data_dir: Path, key: str, previous: list[str]
) -> subprocess.CompletedProcess[str]:
    env = {
        "RELAYPACS_SECRET_KEY": NEW_KEY,
        "RELAYPACS_TOTP_ENCRYPTION_KEY": key,
        "RELAYPACS_TOTP_PREVIOUS_ENCRYPTION_KEYS": ",".join(previous),
    }
    return subprocess.run(
        [*relaypacs_command(), "users", "rotate-totp-key", "--batch", "2"],
        env=gateway_env(data_dir, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def second_factor(client: httpx.AsyncClient, person: Person, **factor: str) -> httpx.Response:
    challenge = (await login(client, person)).json()
    assert challenge["mfa_required"] is True
    return await client.post(
        f"{API}/auth/totp", json={"mfa_token": challenge["mfa_token"], **factor}
    )


def readable_with(stored: str | None, key: str) -> bool:
    assert stored is not None
    try:
        Fernet(key).decrypt(stored.encode())
    except InvalidToken:
        return False
    return True


class TestTotpKeyRotation:
    async def test_every_secret_is_re_encrypted_and_totp_login_works_under_the_new_key(
        self, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "data"
        old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
        people: list[tuple[Person, str, list[str]]] = []
        async with gateway(data_dir, secret_key=NEW_KEY, totp_encryption_key=old) as (
            app,
            client,
        ):
            for _ in range(5):  # more than one batch of the command (--batch 2)
                person = await make_user(app, Role.RADIOLOGIST)
                token = (await signed_in(client, person))["access_token"]
                secret, codes = await enrol(client, token)
                people.append((person, secret, codes))

        # The new key configured, the old one beside it: everything still works, and new
        # secrets are encrypted with the new key already.
        async with gateway(
            data_dir,
            secret_key=NEW_KEY,
            totp_encryption_key=new,
            totp_previous_encryption_keys=[old],
        ) as (app, client):
            person, secret, codes = people[0]
            used_code = await second_factor(client, person, recovery_code=codes[0])
            assert used_code.status_code == 200, used_code.text  # a code hashed under the old key
            stored = (await user_row(app, person.id)).totp_secret
            assert readable_with(stored, old)
            assert not readable_with(stored, new)
            # One secret already under the new key when the command runs (an earlier run that
            # stopped half-way): left as it is.
            already = people[1][0]
            async with app_state(app).db.sessionmaker() as session, session.begin():
                from relaypacs.auth.models import User

                row = await session.get(User, already.id)
                assert row is not None
                assert row.totp_secret is not None
                row.totp_secret = app_state(app).totp_cipher.rotate(row.totp_secret)
                already_stored = row.totp_secret

        first = rotate_totp_key(data_dir, new, [old])
        assert first.returncode == 0, first.stderr
        assert "4 re-encrypted with the current key, 1 already were, 0 unreadable" in first.stderr
        # 5 users x 10 recovery codes, one used: the operator is told what the old key still
        # serves
        assert "49 unused recovery codes" in first.stderr
        again = rotate_totp_key(data_dir, new, [old])  # idempotent
        assert again.returncode == 0, again.stderr
        assert "0 re-encrypted with the current key, 5 already were, 0 unreadable" in again.stderr

        # The old key gone: every secret is read with the new one alone, logins work.
        async with gateway(data_dir, secret_key=NEW_KEY, totp_encryption_key=new) as (app, client):
            for person, secret, _codes in people:
                stored = (await user_row(app, person.id)).totp_secret
                assert readable_with(stored, new)
                assert not readable_with(stored, old)
                assert secret not in (stored or "")
            assert (await user_row(app, already.id)).totp_secret == already_stored
            for person, secret, _codes in people:
                done = await second_factor(client, person, code=totp_code(secret))
                assert done.status_code == 200, (person.username, done.text)
                assert done.json()["access_token"]
            wrong = await second_factor(client, people[2][0], code=totp_code(people[3][1], 5))
            assert wrong.status_code == 401
            audit = await actions(app)
            assert audit.count(("admin.totp_key_rotated", "success")) == 1  # the run that did
        assert old not in first.stderr + first.stdout
        assert new not in first.stderr + first.stdout

    async def test_a_secret_no_key_reads_is_reported_and_the_others_rotated(
        self, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "data"
        lost, old, new = (Fernet.generate_key().decode() for _ in range(3))
        async with gateway(data_dir, secret_key=NEW_KEY, totp_encryption_key=lost) as (
            app,
            client,
        ):
            orphan = await make_user(app, Role.ADMIN)
            await enrol(client, (await signed_in(client, orphan))["access_token"])
        async with gateway(data_dir, secret_key=NEW_KEY, totp_encryption_key=old) as (
            app,
            client,
        ):
            person = await make_user(app, Role.ADMIN)
            secret, _ = await enrol(client, (await signed_in(client, person))["access_token"])
        done = rotate_totp_key(data_dir, new, [old])
        assert done.returncode == 1
        assert "1 re-encrypted with the current key, 0 already were, 1 unreadable" in done.stderr
        assert "reset those users' TOTP" in done.stderr
        async with gateway(data_dir, secret_key=NEW_KEY, totp_encryption_key=new) as (app, client):
            assert (await second_factor(client, person, code=totp_code(secret))).status_code == 200
            refused = await second_factor(client, orphan, code="123456")
            assert refused.status_code == 409
            assert error_code(refused) == "totp_reset_required"
            assert ("admin.totp_key_rotated", "failure") in await actions(app)


def test_key_ids_name_keys_without_showing_them() -> None:
    ring = security.KeyRing(NEW_KEY, (OLD_KEY,))
    assert ring.current_id == security.key_id(NEW_KEY) != security.key_id(OLD_KEY)
    assert ring.by_id(security.key_id(OLD_KEY)) == OLD_KEY
    assert ring.by_id(uuid.uuid4().hex[:16]) is None
    assert len(ring.current_id) == 16
    assert ring.current_id not in NEW_KEY
    token, _ = security.create_access_token(
        user_id=uuid.uuid4(),
        role=Role.CLINICIAN,
        session_id=uuid.uuid4(),
        version=0,
        key=ring,
        lifetime=dt.timedelta(minutes=1),
    )
    assert security.decode_access_token(token, key=ring).role is Role.CLINICIAN
    assert security.decode_access_token(token, key=NEW_KEY).role is Role.CLINICIAN
    # a gateway that only knows the old key refuses what the new key signed
    with pytest.raises(NotAuthenticated):
        security.decode_access_token(token, key=OLD_KEY)
