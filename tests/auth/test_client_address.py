"""The client address of rate limits and audit records, on a real server: X-Forwarded-For is
believed from the configured trusted proxies only, so spoofing it gains an attacker nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth.conftest import API, PASSWORD
from tests.conftest import unique_name
from tests.gateway import create_user, run_gateway

LIMITS = {
    "RELAYPACS_RATE_LIMIT_LOGIN_ACCOUNT_IP": "3/minute",
    "RELAYPACS_RATE_LIMIT_LOGIN_ACCOUNT": "10/minute",
    "RELAYPACS_DICOM_WORKERS": "1",
}


def _login(client: httpx.Client, username: str, password: str, address: str) -> int:
    response = client.post(
        f"{API}/auth/login",
        json={"username": username, "password": password},
        headers={"X-Forwarded-For": address},
    )
    return response.status_code


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    data_dir = tmp_path_factory.mktemp("proxied") / "data"
    env = {**LIMITS, "RELAYPACS_TRUSTED_PROXIES": json.dumps(["127.0.0.1"])}
    with run_gateway(data_dir, env) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, data_dir


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    data_dir = tmp_path_factory.mktemp("exposed") / "data"
    with run_gateway(data_dir, LIMITS) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, data_dir


class TestBehindATrustedProxy:
    def test_brute_force_from_one_address_does_not_lock_out_the_user_at_another(
        self, behind_proxy: tuple[httpx.Client, Path]
    ) -> None:
        client, data_dir = behind_proxy
        username = unique_name("victim")
        create_user(data_dir, username, PASSWORD)
        attacker = "203.0.113.9"
        statuses = [_login(client, username, f"guess {i}", attacker) for i in range(4)]
        assert statuses == [401, 401, 401, 429]
        assert _login(client, username, PASSWORD, attacker) == 429
        assert _login(client, username, PASSWORD, "198.51.100.7") == 200


class TestWithoutATrustedProxy:
    def test_a_spoofed_x_forwarded_for_changes_nothing(
        self, exposed: tuple[httpx.Client, Path]
    ) -> None:
        client, data_dir = exposed
        username = unique_name("victim")
        create_user(data_dir, username, PASSWORD)
        # A new made-up address each time: the gateway still sees the real peer.
        statuses = [_login(client, username, f"guess {i}", f"198.51.100.{i + 1}") for i in range(4)]
        assert statuses == [401, 401, 401, 429]
