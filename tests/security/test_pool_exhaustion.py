"""More concurrent requests than the database pool has connections, against a real gateway: no
request may hold one pooled connection while it waits for another (the upload list kept its read
session while its audit record waited for a second connection: as many lists as connections
stalled the whole gateway for the pool's timeout, then answered 500 to everyone)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.api.uploading import make_study
from tests.security.live import LiveGateway, live_gateway

CONCURRENT = 60  # the pool holds 16 connections on SQLite, 20 on PostgreSQL


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    root = tmp_path_factory.mktemp("pool")
    env = {"RELAYPACS_TOTP_REQUIRED_ROLES": "[]"}
    if request.param == "postgresql":
        env["RELAYPACS_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    with live_gateway(
        root / "data",
        root / "gateway.log",
        {"a": "clinician", "b": "clinician", "admin": "admin"},
        env,
    ) as live:
        yield live


async def test_more_concurrent_audited_reads_than_connections(gateway: LiveGateway) -> None:
    a, b, admin = (gateway.accounts[n] for n in ("a", "b", "admin"))
    limits = httpx.Limits(max_connections=CONCURRENT + 10)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60, limits=limits) as client:
        created = await client.post(
            "/api/v1/uploads", json=make_study(1).manifest(), headers=a.headers
        )
        assert created.status_code == 201, created.text
        upload_id = created.json()["id"]
        other = await client.post(
            "/api/v1/uploads", json=make_study(1).manifest(), headers=b.headers
        )
        assert other.status_code == 201
        # Each of these reads patient data and writes its audit record before it answers.
        reads = [client.get("/api/v1/uploads", headers=a.headers) for _ in range(CONCURRENT)]
        reads += [client.get(f"/api/v1/uploads/{upload_id}", headers=a.headers) for _ in range(10)]
        reads += [
            client.get("/api/v1/admin/uploads?status=stuck&stuck_minutes=1", headers=admin.headers)
            for _ in range(10)
        ]
        reads += [
            client.get("/api/v1/admin/audit?limit=5", headers=admin.headers) for _ in range(10)
        ]
        # Another user's cheap status poll, in the middle of it all.
        reads += [
            client.get(f"/api/v1/uploads/{other.json()['id']}?files=false", headers=b.headers)
            for _ in range(10)
        ]
        answers = await asyncio.gather(*reads)
    statuses = [r.status_code for r in answers]
    assert statuses == [200] * len(reads), sorted(set(statuses))
    assert answers[0].json()["items"][0]["id"] == upload_id
