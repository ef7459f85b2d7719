"""A real gateway process with one account per role, for the security suite."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyotp

from tests.gateway import create_user, run_gateway

PASSWORD = "security suite password"
SECRET_KEY = "security-suite-signing-key-" + "s" * 32
CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True)
class LiveAccount:
    username: str
    role: str
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class LiveGateway:
    base_url: str
    log_path: Path
    accounts: dict[str, LiveAccount]


def enrol_totp(base: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    enrolment = httpx.post(
        f"{base}/api/v1/auth/totp/enrol", json={"password": PASSWORD}, headers=headers
    )
    assert enrolment.status_code == 200, enrolment.text
    code = pyotp.TOTP(enrolment.json()["secret"]).now()
    confirm = httpx.post(f"{base}/api/v1/auth/totp/confirm", json={"code": code}, headers=headers)
    assert confirm.status_code == 200, confirm.text


@contextlib.contextmanager
def live_gateway(
    data_dir: Path, log_path: Path, usernames: Mapping[str, str], env: Mapping[str, str]
) -> Iterator[LiveGateway]:
    """`relaypacs serve` with these accounts ({name: role}), each logged in. The usernames
    are the names with a random suffix: several gateways may share one database."""
    full_env = {
        "RELAYPACS_SECRET_KEY": SECRET_KEY,
        "RELAYPACS_CHUNK_SIZE": str(CHUNK_SIZE),
        # The suites call every endpoint and read each answer whole: an event stream ends soon.
        "RELAYPACS_SSE_MAX_SECONDS": "1",
        **env,
    }
    suffix = secrets.token_hex(4)
    for name, role in usernames.items():
        create_user(data_dir, f"{name}-{suffix}", PASSWORD, role=role, env=full_env)
    with run_gateway(data_dir, full_env, log_path=log_path) as base:
        accounts = {}
        for name, role in usernames.items():
            username = f"{name}-{suffix}"
            login = httpx.post(
                f"{base}/api/v1/auth/login", json={"username": username, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            if login.json().get("totp_enrolment_required"):
                # Admins and radiologists must have a second factor (the default policy):
                # enrol one, as the user would; the same token then has the role's full use.
                enrol_totp(base, token)
            me = httpx.get(f"{base}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
            accounts[name] = LiveAccount(username, role, me.json()["id"], token)
        yield LiveGateway(base, log_path, accounts)
