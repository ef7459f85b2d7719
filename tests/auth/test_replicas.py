"""Two real gateway processes sharing one PostgreSQL database and one Redis: whatever ends a
session on one ends it on the other at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.auth.conftest import API, PASSWORD, REDIS_URL, SIGNING_KEY, redis_prefix
from tests.conftest import unique_name
from tests.gateway import create_user, run_gateway

# Every secret the tests handled, to look for in the servers' logs at the end.
SEEN_SECRETS: set[str] = {PASSWORD, "brand new passphrase"}


@dataclass(frozen=True)
class Replicas:
    a: httpx.Client
    b: httpx.Client
    data_dir: Path
    env: dict[str, str]
    logs: Path

    def user(self, role: str = "clinician") -> str:
        username = unique_name(role)
        create_user(self.data_dir, username, PASSWORD, role=role, env=self.env)
        return username


@pytest.fixture(scope="module")
def replicas(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    env = {
        "RELAYPACS_DATABASE_URL": postgres_url,
        "RELAYPACS_REDIS_URL": REDIS_URL,
        "RELAYPACS_REDIS_PREFIX": redis_prefix(),
        "RELAYPACS_SECRET_KEY": SIGNING_KEY,
        "RELAYPACS_TOTP_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "RELAYPACS_TOTP_REQUIRED_ROLES": json.dumps([]),
        "RELAYPACS_DICOM_WORKERS": "1",
    }
    with (
        run_gateway(root / "a", env) as url_a,
        run_gateway(root / "b", env) as url_b,
        httpx.Client(base_url=url_a, timeout=30) as a,
        httpx.Client(base_url=url_b, timeout=30) as b,
    ):
        yield Replicas(a, b, root / "a", env, root)


def _login(client: httpx.Client, username: str, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post(
        f"{API}/auth/login",
        json={"username": username, "password": password, "refresh_in_body": True},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    SEEN_SECRETS.update((body["access_token"], body["refresh_token"]))
    return body


def _me(client: httpx.Client, token: str) -> int:
    return client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code


def _refresh(client: httpx.Client, token: str) -> httpx.Response:
    response = client.post(f"{API}/auth/refresh", json={"refresh_token": token})
    if response.status_code == 200:
        SEEN_SECRETS.update((response.json()["access_token"], response.json()["refresh_token"]))
    return response


class TestOnASecondProcess:
    def test_a_token_from_one_works_on_the_other(self, replicas: Replicas) -> None:
        tokens = _login(replicas.a, replicas.user())
        assert _me(replicas.b, tokens["access_token"]) == 200
        assert _refresh(replicas.b, tokens["refresh_token"]).status_code == 200

    def test_refresh_reuse_on_one_revokes_the_family_on_both(self, replicas: Replicas) -> None:
        first = _login(replicas.a, replicas.user())
        newest = _refresh(replicas.a, first["refresh_token"]).json()
        assert _me(replicas.b, newest["access_token"]) == 200
        reuse = _refresh(replicas.b, first["refresh_token"])
        assert reuse.status_code == 401
        assert reuse.json()["error"]["code"] == "refresh_token_reused"
        assert _me(replicas.a, newest["access_token"]) == 401
        assert _me(replicas.b, newest["access_token"]) == 401
        assert _refresh(replicas.a, newest["refresh_token"]).status_code == 401

    def test_logout_on_one_is_felt_on_the_other(self, replicas: Replicas) -> None:
        tokens = _login(replicas.a, replicas.user())
        assert _me(replicas.b, tokens["access_token"]) == 200  # B has seen it valid
        out = replicas.a.post(
            f"{API}/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert out.status_code == 204
        assert _me(replicas.b, tokens["access_token"]) == 401
        assert _refresh(replicas.b, tokens["refresh_token"]).status_code == 401

    def test_password_change_on_one_ends_other_sessions_on_the_other(
        self, replicas: Replicas
    ) -> None:
        username = replicas.user()
        here, there = _login(replicas.a, username), _login(replicas.b, username)
        changed = replicas.b.post(
            f"{API}/auth/password",
            json={"current_password": PASSWORD, "new_password": "brand new passphrase"},
            headers={"Authorization": f"Bearer {there['access_token']}"},
        )
        assert changed.status_code == 200, changed.text
        assert _me(replicas.a, here["access_token"]) == 401
        assert _me(replicas.b, here["access_token"]) == 401
        assert _refresh(replicas.a, here["refresh_token"]).status_code == 401
        assert _me(replicas.a, changed.json()["access_token"]) == 200

    def test_disabling_on_one_ends_the_users_tokens_on_the_other(self, replicas: Replicas) -> None:
        admin = _login(replicas.a, replicas.user("admin"))["access_token"]
        username = replicas.user()
        tokens = _login(replicas.b, username)
        assert _me(replicas.b, tokens["access_token"]) == 200
        me = replicas.b.get(
            f"{API}/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        ).json()
        disabled = replicas.a.post(
            f"{API}/admin/users/{me['id']}/disable",
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert disabled.status_code == 200, disabled.text
        assert _me(replicas.b, tokens["access_token"]) == 401
        assert _refresh(replicas.b, tokens["refresh_token"]).status_code == 401
        login = replicas.b.post(
            f"{API}/auth/login", json={"username": username, "password": PASSWORD}
        )
        assert login.status_code == 401

    def test_the_servers_logs_hold_no_password_or_token(self, replicas: Replicas) -> None:
        # Runs last in this module: every login, refresh and change above was logged by now.
        logs = sorted(replicas.logs.glob("gateway-*.log"))
        assert len(logs) == 2
        text = "\n".join(path.read_text(errors="replace") for path in logs)
        assert "POST /api/v1/auth/login" in text  # the access log is there
        assert len(SEEN_SECRETS) > 10
        leaked = [secret[:6] + "..." for secret in SEEN_SECRETS if secret in text]
        assert leaked == []
        assert replicas.env["RELAYPACS_TOTP_ENCRYPTION_KEY"] not in text
        assert SIGNING_KEY not in text
