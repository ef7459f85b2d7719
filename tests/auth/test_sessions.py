"""Sessions in one gateway: refresh rotation and reuse, cookie, logout, password change,
idle and absolute ends, temporary passwords and the TOTP enrolment requirement."""

from __future__ import annotations

import datetime as dt

import httpx
from fastapi import FastAPI
from sqlalchemy import select, update

from relaypacs.auth import security
from relaypacs.auth.models import AuthSession, Role
from relaypacs.auth.router import REFRESH_COOKIE
from relaypacs.state import app_settings, app_state
from tests.auth.conftest import (
    API,
    actions,
    bearer,
    client_for,
    enrol,
    error_code,
    login,
    make_user,
    signed_in,
)


async def _refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": token})


async def _me(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get(f"{API}/auth/me", headers=bearer(token))).status_code


class TestRefreshRotation:
    async def test_each_refresh_gives_new_tokens_and_uses_up_the_old_one(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        first = await signed_in(client, person)
        second = await _refresh(client, first["refresh_token"])
        assert second.status_code == 200, second.text
        body = second.json()
        assert body["refresh_token"] != first["refresh_token"]
        assert await _me(client, body["access_token"]) == 200
        key = app_state(app).signing_key
        assert (
            security.decode_access_token(body["access_token"], key=key).session_id
            == security.decode_access_token(first["access_token"], key=key).session_id
        )
        third = await _refresh(client, body["refresh_token"])
        assert third.status_code == 200
        assert ("auth.refresh", "success") in await actions(app, actor_id=person.id)

    async def test_reuse_of_a_rotated_token_revokes_the_whole_family(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        first = await signed_in(client, person)
        newest = (await _refresh(client, first["refresh_token"])).json()
        assert await _me(client, newest["access_token"]) == 200
        # The thief (or the victim) presents the rotated token again.
        reuse = await _refresh(client, first["refresh_token"])
        assert reuse.status_code == 401
        assert error_code(reuse) == "refresh_token_reused"
        # The newest tokens of the family die too.
        assert await _me(client, newest["access_token"]) == 401
        after = await _refresh(client, newest["refresh_token"])
        assert after.status_code == 401
        assert ("auth.refresh_reuse", "failure") in await actions(app, actor_id=person.id)
        # Another session of the same user is not touched.
        other = await signed_in(client, person)
        assert await _me(client, other["access_token"]) == 200

    async def test_unknown_refresh_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await _refresh(client, "x" * 43)
        assert response.status_code == 401
        assert error_code(response) == "invalid_refresh_token"
        nothing = await client.post(f"{API}/auth/refresh")
        assert nothing.status_code == 401

    async def test_browser_gets_an_httponly_secure_strict_cookie_on_the_auth_path(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        response = await login(client, person)
        assert response.status_code == 200
        assert response.json()["refresh_token"] is None  # not readable by scripts
        assert response.headers["cache-control"] == "no-store"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{REFRESH_COOKIE}=")
        for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/api/v1/auth"):
            assert attribute.lower() in cookie.lower(), attribute
        # The cookie alone refreshes, and is replaced.
        refreshed = await client.post(f"{API}/auth/refresh")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["refresh_token"] is None
        assert refreshed.headers["set-cookie"] != cookie
        assert await _me(client, refreshed.json()["access_token"]) == 200

    async def test_a_client_taking_the_token_in_the_body_gets_no_cookie(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        response = await login(client, person, refresh_in_body=True)
        assert response.json()["refresh_token"]
        assert "set-cookie" not in response.headers
        refreshed = await _refresh(client, response.json()["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["refresh_token"]
        assert "set-cookie" not in refreshed.headers

    async def test_idle_and_absolute_ends(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        person = await make_user(app)
        settings = app_settings(app)
        for column, age in (
            (AuthSession.last_used_at, dt.timedelta(minutes=settings.refresh_idle_minutes + 1)),
            (AuthSession.expires_at, dt.timedelta(seconds=1)),
        ):
            tokens = await signed_in(client, person)
            sid = security.decode_access_token(
                tokens["access_token"], key=app_state(app).signing_key
            ).session_id
            async with app_state(app).db.sessionmaker() as session, session.begin():
                await session.execute(
                    update(AuthSession)
                    .where(AuthSession.id == sid)
                    .values({column.key: dt.datetime.now(dt.UTC) - age})
                )
            response = await _refresh(client, tokens["refresh_token"])
            assert response.status_code == 401, column
            assert error_code(response) == "session_expired"


class TestLogout:
    async def test_logout_kills_the_access_and_refresh_tokens_at_once(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        tokens = await signed_in(client, person)
        other = await signed_in(client, person)
        out = await client.post(f"{API}/auth/logout", headers=bearer(tokens["access_token"]))
        assert out.status_code == 204
        assert await _me(client, tokens["access_token"]) == 401
        assert (await _refresh(client, tokens["refresh_token"])).status_code == 401
        assert await _me(client, other["access_token"]) == 200  # only this session ended
        assert ("auth.logout", "success") in await actions(app, actor_id=person.id)

    async def test_own_sessions_listed_and_ended(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        one, two = await signed_in(client, person), await signed_in(client, person)
        listed = await client.get(f"{API}/auth/sessions", headers=bearer(one["access_token"]))
        assert listed.status_code == 200
        assert len(listed.json()) == 2
        sid_one, sid_two = (
            security.decode_access_token(
                t["access_token"], key=app_state(app).signing_key
            ).session_id
            for t in (one, two)
        )
        # The session that asks is marked: the app says "this device" of it.
        assert {s["id"]: s["current"] for s in listed.json()} == {
            str(sid_one): True,
            str(sid_two): False,
        }
        ended = await client.delete(
            f"{API}/auth/sessions/{sid_two}", headers=bearer(one["access_token"])
        )
        assert ended.status_code == 204
        assert await _me(client, two["access_token"]) == 401
        # Someone else's session is a 404, like a missing one.
        stranger = await signed_in(client, await make_user(app))
        foreign = await client.delete(
            f"{API}/auth/sessions/{sid_two}", headers=bearer(stranger["access_token"])
        )
        assert foreign.status_code == 404


class TestPasswordChange:
    async def test_ends_every_other_session_and_renews_this_one(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        mine, elsewhere = await signed_in(client, person), await signed_in(client, person)
        new_password = "a whole new passphrase"
        changed = await client.post(
            f"{API}/auth/password",
            json={"current_password": person.password, "new_password": new_password},
            headers=bearer(mine["access_token"]),
        )
        assert changed.status_code == 200, changed.text
        assert await _me(client, changed.json()["access_token"]) == 200
        assert await _me(client, mine["access_token"]) == 401  # the old one is replaced
        assert await _me(client, elsewhere["access_token"]) == 401
        assert (await _refresh(client, elsewhere["refresh_token"])).status_code == 401
        assert (await _refresh(client, mine["refresh_token"])).status_code == 200
        assert (await login(client, person)).status_code == 401
        assert (await login(client, person, password=new_password)).status_code == 200
        assert ("auth.password_change", "success") in await actions(app, actor_id=person.id)

    async def test_wrong_current_password_and_weak_new_one_are_refused(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        tokens = await signed_in(client, person)
        wrong = await client.post(
            f"{API}/auth/password",
            json={"current_password": "not it at all", "new_password": "another passphrase"},
            headers=bearer(tokens["access_token"]),
        )
        assert wrong.status_code == 400
        assert error_code(wrong) == "wrong_password"
        weak = await client.post(
            f"{API}/auth/password",
            json={"current_password": person.password, "new_password": "short"},
            headers=bearer(tokens["access_token"]),
        )
        assert weak.status_code == 422
        assert error_code(weak) == "weak_password"
        assert await _me(client, tokens["access_token"]) == 200
        assert ("auth.password_change", "failure") in await actions(app, actor_id=person.id)

    async def test_temporary_password_allows_only_the_change(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app, must_change_password=True)
        tokens = await signed_in(client, person)
        assert tokens["password_change_required"] is True
        token = tokens["access_token"]
        blocked = await client.get(f"{API}/uploads", headers=bearer(token))
        assert blocked.status_code == 403
        assert error_code(blocked) == "password_change_required"
        changed = await client.post(
            f"{API}/auth/password",
            json={"current_password": person.password, "new_password": "my own passphrase"},
            headers=bearer(token),
        )
        assert changed.status_code == 200
        uploads = await client.get(f"{API}/uploads", headers=bearer(changed.json()["access_token"]))
        assert uploads.status_code == 200


class TestTotpRequiredByRole:
    async def test_radiologist_without_totp_may_only_enrol(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app, Role.RADIOLOGIST)
        tokens = await signed_in(client, person)
        assert tokens["totp_enrolment_required"] is True
        token = tokens["access_token"]
        blocked = await client.get(f"{API}/uploads", headers=bearer(token))
        assert blocked.status_code == 403
        assert error_code(blocked) == "totp_enrolment_required"
        await enrol(client, token)
        assert (await client.get(f"{API}/uploads", headers=bearer(token))).status_code == 200

    async def test_clinician_needs_no_totp(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        tokens = await signed_in(client, await make_user(app))
        assert tokens["totp_enrolment_required"] is False
        uploads = await client.get(f"{API}/uploads", headers=bearer(tokens["access_token"]))
        assert uploads.status_code == 200


class TestLoginAudit:
    async def test_success_and_failure_are_recorded_without_the_password(
        self, app: FastAPI
    ) -> None:
        person = await make_user(app)
        async with client_for(app, "10.200.0.1") as client:
            assert (await login(client, person, password="wrong password!")).status_code == 401
            assert (await login(client, person)).status_code == 200
        async with app_state(app).db.read_sessionmaker() as session, session.begin():
            from relaypacs.audit.models import AuditEvent

            rows = list(
                await session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.actor_id == person.id, AuditEvent.action == "auth.login")
                    .order_by(AuditEvent.id)
                )
            )
        assert [(r.outcome, r.details.get("reason")) for r in rows] == [
            ("failure", "bad_credentials"),
            ("success", None),
        ]
        assert all(r.client_ip == "10.200.0.1" for r in rows)
        assert "wrong password" not in repr([r.details for r in rows])


class TestLogoutWithTheRefreshTokenOnly:
    async def test_an_expired_access_token_is_not_needed_to_log_out(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        person = await make_user(app)
        by_body = await signed_in(client, person)
        out = await client.post(
            f"{API}/auth/logout", json={"refresh_token": by_body["refresh_token"]}
        )
        assert out.status_code == 204
        assert await _me(client, by_body["access_token"]) == 401
        assert (await _refresh(client, by_body["refresh_token"])).status_code == 401
        # The browser: the cookie alone, which the response then clears.
        by_cookie = await login(client, person)
        access = by_cookie.json()["access_token"]
        out = await client.post(f"{API}/auth/logout")
        assert out.status_code == 204
        assert REFRESH_COOKIE in out.headers["set-cookie"]
        assert "max-age=0" in out.headers["set-cookie"].lower()
        assert await _me(client, access) == 401
        assert (await client.post(f"{API}/auth/logout")).status_code == 401  # nothing left
        bogus = await client.post(f"{API}/auth/logout", json={"refresh_token": "y" * 43})
        assert bogus.status_code == 401
