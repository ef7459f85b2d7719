"""The administrator's view of the PACS targets (GET /admin/targets): each configured target
probed now, this replica's breaker, its queue and its last outcomes, against a scriptable PACS
that answers and a second target where nothing listens; on each database."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import PacsTarget, Settings
from relaypacs.main import create_app
from relaypacs.state import app_state
from tests.api.conftest import CHUNK_SIZE, PASSWORD, Account
from tests.api.uploading import API, make_study, upload_study
from tests.conftest import unique_name
from tests.pacs import FaultPacs, status
from tests.servers import free_port

PACS_USER, PACS_PASSWORD = "gateway", "pacs-secret-password"


@pytest.fixture
def pacs() -> Iterator[FaultPacs]:
    with FaultPacs(auth=(PACS_USER, PACS_PASSWORD)) as server:
        yield server


class Console:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app, self.client = app, client

    async def account(self, role: Role) -> Account:
        username = unique_name(role.value[:5])
        async with app_state(self.app).db.sessionmaker() as session, session.begin():
            await create_user(session, username=username, password=PASSWORD, role=role)
        login = await self.client.post(
            f"{API}/auth/login", json={"username": username, "password": PASSWORD}
        )
        return Account(username, role, login.json()["access_token"])

    async def targets(self, admin: Account) -> dict[str, dict[str, Any]]:
        response = await self.client.get(f"{API}/admin/targets", headers=admin.headers)
        assert response.status_code == 200, response.text
        return {t["name"]: t for t in response.json()["items"]}


@pytest.fixture
async def console(
    tmp_path: Path, pacs: FaultPacs, database_url: str
) -> AsyncIterator[tuple[Console, str, str]]:
    # Names of their own: on PostgreSQL the queue is shared with the other tests' gateways.
    main, offsite = unique_name("main"), unique_name("offsite")
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        chunk_size=CHUNK_SIZE,
        secret_key="targets-test-key-" + "t" * 32,
        pacs_targets=[
            PacsTarget(
                name=main,
                url=pacs.dicomweb_url.replace("http://", f"http://{PACS_USER}@"),
                username=PACS_USER,
                password=PACS_PASSWORD,
            ),
            # Nothing listens there: a closed port answers at once.
            PacsTarget(name=offsite, url=f"http://127.0.0.1:{free_port()}/dicom-web"),
        ],
        forward_retry_delays=[30.0],
        forward_poll_seconds=0.05,
        breaker_failures=1,
        breaker_reset_seconds=600,
        health_timeout_seconds=3,
        totp_required_roles=[],
        rate_limit_login_ip="100000/minute",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Console(app, client), main, offsite


async def _wait_upload(
    client: httpx.AsyncClient, account: Account, upload_id: str, *, until: Any
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = (
            await client.get(f"{API}/uploads/{upload_id}", headers=account.headers)
        ).json()
        if until(body) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.05)


class TestTargetHealth:
    async def test_reachable_breaker_queue_and_last_outcomes(
        self, console: tuple[Console, str, str], pacs: FaultPacs
    ) -> None:
        gateway, main, offsite = console
        admin = await gateway.account(Role.ADMIN)
        clinician = await gateway.account(Role.CLINICIAN)

        # Before anything was sent: the PACS answers, the other does not.
        before = await gateway.targets(admin)
        assert list(before) == [main, offsite]
        assert before[main]["reachable"] is True
        assert before[main]["probe_error"] is None
        assert before[main]["default"] is True
        assert before[main]["breaker"] == "closed"
        assert before[main]["queued_jobs"] == 0
        assert before[main]["oldest_job_age_seconds"] is None
        assert before[main]["last_delivered_at"] is None
        assert before[offsite]["reachable"] is False
        assert before[offsite]["probe_error"] == "ConnectError"
        assert before[offsite]["default"] is False
        # The URL is shown without the credentials it was configured with.
        assert before[main]["url"] == pacs.dicomweb_url
        assert PACS_USER not in before[main]["url"]

        # A study delivered.
        first = await upload_study(gateway.client, clinician, make_study(2))
        assert first.status_code == 202, first.text
        delivered = await _wait_upload(
            gateway.client,
            clinician,
            first.json()["id"],
            until=lambda b: b["status"] in ("delivered", "failed", "cancelled"),
        )
        assert delivered["status"] == "delivered"
        after = (await gateway.targets(admin))[main]
        assert after["last_attempt_outcome"] == "delivered"
        assert after["last_delivered_at"] is not None
        delivered_at = dt.datetime.fromisoformat(after["last_delivered_at"])

        # Then the PACS refuses every study (503): the next one waits, the breaker opens.
        pacs.default_stow = status(503)
        second = await upload_study(gateway.client, clinician, make_study(2))
        assert second.status_code == 202, second.text
        waiting = await _wait_upload(
            gateway.client,
            clinician,
            second.json()["id"],
            until=lambda b: (b.get("forwarding") or {}).get("attempts", 0) > 0,
        )
        assert waiting["status"] in ("queued", "forwarding")
        failing = (await gateway.targets(admin))[main]
        assert failing["breaker"] == "open"
        assert failing["breaker_retry_seconds"] > 0
        assert failing["queued_jobs"] == 1
        assert failing["retrying_jobs"] == 1
        assert failing["oldest_job_age_seconds"] >= 0
        assert failing["last_attempt_outcome"] == "retrying"
        assert "503" in failing["last_error"]
        # The study delivered earlier is still the last delivery; QIDO-RS still answers.
        assert dt.datetime.fromisoformat(failing["last_delivered_at"]) == delivered_at
        assert failing["reachable"] is True
        # The other target's queue is its own.
        assert (await gateway.targets(admin))[offsite]["queued_jobs"] == 0

    async def test_only_administrators(self, console: tuple[Console, str, str]) -> None:
        gateway, _, _ = console
        for role in (Role.CLINICIAN, Role.RADIOLOGIST):
            account = await gateway.account(role)
            response = await gateway.client.get(f"{API}/admin/targets", headers=account.headers)
            assert response.status_code == 403
            assert response.json()["error"]["code"]
        anonymous = await gateway.client.get(f"{API}/admin/targets")
        assert anonymous.status_code == 401
