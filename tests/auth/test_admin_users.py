"""User administration: every action works, ends sessions where it must, is audited, and no
body can set a role, owner or status it should not."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.audit.models import AuditEvent
from relaypacs.auth import security
from relaypacs.auth.models import Role
from relaypacs.state import app_state
from tests.auth.conftest import (
    API,
    Person,
    actions,
    audit_rows,
    bearer,
    enrol,
    error_code,
    login,
    make_user,
    signed_in,
    user_row,
)
from tests.conftest import unique_name


@pytest.fixture
async def admin_token(app: FastAPI, client: httpx.AsyncClient) -> str:
    admin = await make_user(app, Role.ADMIN)
    token: str = (await signed_in(client, admin))["access_token"]
    await enrol(client, token)  # admins must use TOTP (the default setting)
    return token


def _admin_id(app: FastAPI, token: str) -> str:
    return str(security.decode_access_token(token, key=app_state(app).signing_key).user_id)


async def _me(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get(f"{API}/auth/me", headers=bearer(token))).status_code


class TestCreate:
    async def test_created_user_must_change_the_temporary_password(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        created = await client.post(
            f"{API}/admin/users",
            json={"username": unique_name("newbie"), "role": "clinician"},
            headers=bearer(admin_token),
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["must_change_password"] is True
        assert body["is_active"] is True
        password = body["temporary_password"]
        assert password is not None
        assert len(password) >= 12
        person = Person(body["id"], body["username"], Role.CLINICIAN, password)
        first = await login(client, person)
        assert first.json()["password_change_required"] is True
        token = first.json()["access_token"]
        assert (await client.get(f"{API}/uploads", headers=bearer(token))).status_code == 403
        audit = await actions(app, object_id=body["id"])
        assert ("admin.user_create", "success") in audit
        rows = [r for r in await _rows(app, body["id"]) if r.action == "admin.user_create"]
        assert str(rows[0].actor_id) == _admin_id(app, admin_token)
        assert password not in repr(rows[0].details)

    async def test_duplicate_and_weak_are_clear_4xx_and_audited(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        existing = await make_user(app)
        duplicate = await client.post(
            f"{API}/admin/users",
            json={"username": existing.username, "role": "clinician"},
            headers=bearer(admin_token),
        )
        assert duplicate.status_code == 409
        assert error_code(duplicate) == "username_taken"
        weak = await client.post(
            f"{API}/admin/users",
            json={"username": "weakling1", "role": "clinician", "temporary_password": "short"},
            headers=bearer(admin_token),
        )
        assert weak.status_code == 422
        assert error_code(weak) == "weak_password"
        admin_actions = await actions(app, actor_id=_uuid(_admin_id(app, admin_token)))
        assert admin_actions.count(("admin.user_create", "failure")) == 2


class TestDisable:
    async def test_disable_ends_sessions_at_once_and_enable_restores_login(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        person = await make_user(app)
        tokens = await signed_in(client, person)
        disabled = await client.post(
            f"{API}/admin/users/{person.id}/disable", headers=bearer(admin_token)
        )
        assert disabled.status_code == 200
        assert disabled.json()["is_active"] is False
        assert await _me(client, tokens["access_token"]) == 401
        refresh = await client.post(
            f"{API}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refresh.status_code == 401
        assert (await login(client, person)).status_code == 401
        enabled = await client.post(
            f"{API}/admin/users/{person.id}/enable", headers=bearer(admin_token)
        )
        assert enabled.status_code == 200
        assert (await login(client, person)).status_code == 200
        assert await _me(client, tokens["access_token"]) == 401  # old tokens stay dead
        audit = await actions(app, object_id=person.id)
        assert ("admin.user_disable", "success") in audit
        assert ("admin.user_enable", "success") in audit

    async def test_admin_cannot_disable_or_demote_themselves(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        me = _admin_id(app, admin_token)
        response = await client.post(f"{API}/admin/users/{me}/disable", headers=bearer(admin_token))
        assert response.status_code == 409
        role = await client.put(
            f"{API}/admin/users/{me}/role", json={"role": "clinician"}, headers=bearer(admin_token)
        )
        assert role.status_code == 409
        assert ("admin.user_disable", "failure") in await actions(app, object_id=_uuid(me))

    async def test_unknown_user_is_404_and_audited(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        missing = uuid.uuid4()
        response = await client.post(
            f"{API}/admin/users/{missing}/disable", headers=bearer(admin_token)
        )
        assert response.status_code == 404
        assert error_code(response) == "user_not_found"
        assert await actions(app, object_id=missing) == [("admin.user_disable", "failure")]


class TestRoleAndPassword:
    async def test_role_change_ends_sessions_and_applies_at_next_login(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        person = await make_user(app)
        tokens = await signed_in(client, person)
        changed = await client.put(
            f"{API}/admin/users/{person.id}/role",
            json={"role": "admin"},
            headers=bearer(admin_token),
        )
        assert changed.status_code == 200
        assert changed.json()["role"] == "admin"
        assert await _me(client, tokens["access_token"]) == 401
        again = (await login(client, person)).json()
        me = await client.get(f"{API}/auth/me", headers=bearer(again["access_token"]))
        assert me.json()["role"] == "admin"
        assert again["totp_enrolment_required"] is True  # admins need TOTP
        row = next(r for r in await _rows(app, person.id) if r.action == "admin.user_role")
        assert row.details["from"] == "clinician"
        assert row.details["to"] == "admin"

    async def test_temporary_password_replaces_the_old_and_ends_sessions(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        person = await make_user(app)
        tokens = await signed_in(client, person)
        reset = await client.post(
            f"{API}/admin/users/{person.id}/password",
            json={"temporary_password": "temporary passphrase"},
            headers=bearer(admin_token),
        )
        assert reset.status_code == 200
        assert reset.json()["temporary_password"] is None  # chosen by the admin, not echoed
        assert await _me(client, tokens["access_token"]) == 401
        assert (await login(client, person)).status_code == 401
        temporary = await login(client, person, password="temporary passphrase")
        assert temporary.json()["password_change_required"] is True
        assert ("admin.user_password_reset", "success") in await actions(app, object_id=person.id)


class TestSessions:
    async def test_list_and_revoke_one_or_all(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        person = await make_user(app)
        one, two, three = [await signed_in(client, person) for _ in range(3)]
        listed = await client.get(
            f"{API}/admin/users/{person.id}/sessions", headers=bearer(admin_token)
        )
        assert listed.status_code == 200
        assert len(listed.json()) == 3
        sid = security.decode_access_token(one["access_token"], key=app_state(app).signing_key)
        revoked = await client.delete(
            f"{API}/admin/users/{person.id}/sessions/{sid.session_id}",
            headers=bearer(admin_token),
        )
        assert revoked.status_code == 204
        assert await _me(client, one["access_token"]) == 401
        assert await _me(client, two["access_token"]) == 200
        everything = await client.delete(
            f"{API}/admin/users/{person.id}/sessions", headers=bearer(admin_token)
        )
        assert everything.status_code == 204
        assert await _me(client, two["access_token"]) == 401
        assert await _me(client, three["access_token"]) == 401
        after = await client.get(
            f"{API}/admin/users/{person.id}/sessions", headers=bearer(admin_token)
        )
        assert after.json() == []
        audit = await actions(app, object_id=person.id)
        assert ("admin.session_revoke", "success") in audit
        assert ("admin.session_revoke_all", "success") in audit

    async def test_list_users_is_for_admins_only(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str
    ) -> None:
        person = await make_user(app)
        listing = await client.get(f"{API}/admin/users?limit=500", headers=bearer(admin_token))
        assert listing.status_code == 200
        assert person.username in [u["username"] for u in listing.json()["items"]]
        assert "password_hash" not in listing.text
        assert "totp_secret" not in listing.text
        clinician = (await signed_in(client, person))["access_token"]
        for method, path in (
            ("GET", "/admin/users"),
            ("POST", f"/admin/users/{person.id}/enable"),
            ("PUT", f"/admin/users/{person.id}/role"),
            ("DELETE", f"/admin/users/{person.id}/sessions"),
        ):
            response = await client.request(
                method, f"{API}{path}", json={"role": "admin"}, headers=bearer(clinician)
            )
            assert response.status_code == 403, (method, path)
        assert (await user_row(app, person.id)).role == Role.CLINICIAN


MASS_ASSIGNMENT: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/auth/login", {"role": "admin"}),
    ("POST", "/auth/login", {"is_active": True}),
    ("POST", "/auth/password", {"role": "admin"}),
    ("POST", "/auth/password", {"must_change_password": False}),
    ("POST", "/auth/totp/confirm", {"totp_enabled": True}),
    ("POST", "/auth/refresh", {"user_id": "00000000-0000-0000-0000-000000000000"}),
    ("POST", "/uploads", {"user_id": "00000000-0000-0000-0000-000000000000"}),
    ("POST", "/uploads", {"owner": "someone"}),
    ("POST", "/uploads", {"status": "delivered"}),
]


class TestMassAssignment:
    @pytest.mark.parametrize(("method", "path", "extra"), MASS_ASSIGNMENT)
    async def test_user_facing_bodies_refuse_role_owner_status(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        extra: dict[str, Any],
    ) -> None:
        person = await make_user(app)
        tokens = await signed_in(client, person)
        base: dict[str, dict[str, Any]] = {
            "/auth/login": {"username": person.username, "password": person.password},
            "/auth/password": {
                "current_password": person.password,
                "new_password": "a perfectly good passphrase",
            },
            "/auth/totp/confirm": {"code": "123456"},
            "/auth/refresh": {"refresh_token": tokens["refresh_token"]},
            "/uploads": {"study_instance_uid": "1.2.3", "files": []},
        }
        response = await client.request(
            method,
            f"{API}{path}",
            json={**base[path], **extra},
            headers=bearer(tokens["access_token"]),
        )
        assert response.status_code == 422, response.text
        assert error_code(response) == "invalid_request"
        user = await user_row(app, person.id)
        assert user.role == Role.CLINICIAN
        assert user.is_active
        assert not user.totp_enabled
        assert not user.must_change_password
        assert (await login(client, person)).status_code == 200  # password unchanged

    @pytest.mark.parametrize(
        "extra",
        [
            {"is_active": False},
            {"must_change_password": False},
            {"totp_enabled": True},
            {"id": "00000000-0000-0000-0000-000000000000"},
            {"password_hash": "x"},
        ],
    )
    async def test_admin_bodies_allow_only_their_fields(
        self, app: FastAPI, client: httpx.AsyncClient, admin_token: str, extra: dict[str, Any]
    ) -> None:
        person = await make_user(app)
        create = await client.post(
            f"{API}/admin/users",
            json={"username": unique_name("mass"), "role": "clinician", **extra},
            headers=bearer(admin_token),
        )
        assert create.status_code == 422
        role = await client.put(
            f"{API}/admin/users/{person.id}/role",
            json={"role": "radiologist", **extra},
            headers=bearer(admin_token),
        )
        assert role.status_code == 422
        user = await user_row(app, person.id)
        assert user.role == Role.CLINICIAN
        assert user.is_active


def _uuid(value: str) -> uuid.UUID:
    return uuid.UUID(value)


async def _rows(app: FastAPI, object_id: uuid.UUID | str) -> list[AuditEvent]:
    return await audit_rows(app, object_id=_uuid(str(object_id)))
