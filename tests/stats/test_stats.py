"""The daily statistics: a day with known uploads gives the expected counts, percentiles,
statuses, failure reasons and per-target figures, live and once stored; the endpoint is the
administrators' (others 403, anonymous 401), its bad ranges a clear 422, its reads audited."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from relaypacs.auth.models import Role
from relaypacs.db import utcnow
from relaypacs.forwarding.service import enqueue
from relaypacs.state import app_state
from relaypacs.stats.service import percentile, store_day
from relaypacs.uploads.models import Upload, UploadStatus
from tests.api.conftest import Account, MakeAccount
from tests.api.uploading import API, Study, complete, init, make_study, send_all, upload_study

STATS = f"{API}/admin/stats"


class TestPercentile:
    def test_nearest_rank(self) -> None:
        values = [float(v) for v in range(1, 101)]
        random.shuffle(values)
        assert percentile(values, 50) == 50
        assert percentile(values, 95) == 95
        assert percentile([7.0], 95) == 7
        assert percentile([10.0, 20.0, 30.0, 400.0], 50) == 20
        assert percentile([10.0, 20.0, 30.0, 400.0], 95) == 400
        assert percentile([], 50) is None


async def _accepted(client: httpx.AsyncClient, account: Account) -> tuple[str, int]:
    study = make_study(1)
    response = await upload_study(client, account, study)
    assert response.status_code in (200, 202), response.text
    return response.json()["id"], response.json()["total_bytes"]


async def _refused(client: httpx.AsyncClient, account: Account) -> tuple[str, int]:
    bad = Study(make_study(1).uid, [b"%PDF-1.7 this is not dicom" * 40], ["report.pdf"])
    response = await init(client, account, bad)
    assert response.status_code == 201, response.text
    await send_all(client, account, response.json()["id"], bad)
    assert (await complete(client, account, response.json()["id"])).status_code == 422
    return response.json()["id"], len(bad.files[0])


async def _place(app: FastAPI, upload_id: str, *, target: str | None = None, **values: Any) -> None:
    """Put an upload on the test's day, as delivered after a known time (the test's stand-in
    for the PACS and the clock)."""
    async with app_state(app).db.sessionmaker() as session, session.begin():
        await session.execute(
            update(Upload).where(Upload.id == uuid.UUID(upload_id)).values(**values)
        )
        if target is not None:
            enqueue(session, upload_id=uuid.UUID(upload_id), target=target)


@pytest.fixture
async def day(app: FastAPI, client: httpx.AsyncClient, clinician: Account) -> tuple[dt.date, int]:
    """A past day of its own (no other test's uploads on it) with five uploads: four delivered
    after 10, 20, 30 and 400 s (two to each of two targets), one refused; and one upload just
    before midnight of the day before. Returns the day and the five uploads' bytes."""
    the_day = dt.date(2001, 1, 1) + dt.timedelta(days=random.randrange(3000))
    at = dt.datetime.combine(the_day, dt.time(10), tzinfo=dt.UTC)
    total = 0
    for seconds, target in ((10, "pacs_a"), (20, "pacs_a"), (30, "pacs_b"), (400, "pacs_b")):
        upload_id, size = await _accepted(client, clinician)
        total += size
        await _place(
            app,
            upload_id,
            target=target,
            status=UploadStatus.DELIVERED,
            created_at=at,
            completed_at=at,
            delivered_at=at + dt.timedelta(seconds=seconds),
        )
    refused_id, size = await _refused(client, clinician)
    total += size
    await _place(app, refused_id, created_at=at + dt.timedelta(hours=1))
    before_id, _ = await _accepted(client, clinician)
    midnight = dt.datetime.combine(the_day, dt.time(), tzinfo=dt.UTC)
    await _place(app, before_id, created_at=midnight - dt.timedelta(microseconds=1))
    return the_day, total


def _expected(total: int) -> dict[str, Any]:
    return {
        "uploads": 5,
        "bytes": total,
        "instances": 4,
        "delivered": 4,
        "latency_p50_seconds": 20.0,
        "latency_p95_seconds": 400.0,
        "statuses": {"delivered": 4, "rejected": 1},
        "failures": {"not_dicom": 1},
    }


class TestDailyStats:
    async def test_a_day_of_known_uploads_live_then_stored(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        make_account: MakeAccount,
        day: tuple[dt.date, int],
    ) -> None:
        the_day, total = day
        admin = await make_account(Role.ADMIN)
        query = {"from": the_day.isoformat(), "to": the_day.isoformat()}
        live = await client.get(STATS, params=query, headers=admin.headers)
        assert live.status_code == 200, live.text
        (figures,) = live.json()["days"]
        assert figures["day"] == the_day.isoformat()
        assert figures["live"] is True
        assert {k: figures[k] for k in _expected(total)} == _expected(total)
        targets = {t["target"]: t for t in figures["targets"]}
        assert set(targets) == {"pacs_a", "pacs_b"}
        assert (targets["pacs_a"]["uploads"], targets["pacs_b"]["uploads"]) == (2, 2)
        assert targets["pacs_a"]["latency_p50_seconds"] == 10
        assert targets["pacs_a"]["latency_p95_seconds"] == 20
        assert targets["pacs_b"]["latency_p50_seconds"] == 30
        assert targets["pacs_b"]["latency_p95_seconds"] == 400
        assert targets["pacs_a"]["failures"] == {}

        # Stored by the daily job: the same figures, read from the table.
        await store_day(app_state(app).db, the_day)
        stored = await client.get(STATS, params=query, headers=admin.headers)
        (kept,) = stored.json()["days"]
        assert kept["live"] is False
        assert {k: kept[k] for k in _expected(total)} == _expected(total)
        assert kept["targets"] == figures["targets"]

        # Every read is in the audit log.
        audit = await client.get(
            f"{API}/admin/audit", params={"action": "admin.stats_read"}, headers=admin.headers
        )
        assert audit.status_code == 200, audit.text
        mine = [e for e in audit.json()["items"] if e["details"]["from"] == the_day.isoformat()]
        assert len(mine) == 2

    async def test_default_range_is_the_last_seven_days_today_live(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        response = await client.get(STATS, headers=admin.headers)
        assert response.status_code == 200, response.text
        days = response.json()["days"]
        today = utcnow().date()
        assert [d["day"] for d in days] == [
            (today - dt.timedelta(days=back)).isoformat() for back in range(6, -1, -1)
        ]
        assert days[-1]["live"] is True

    @pytest.mark.parametrize(
        "params",
        [
            {"from": "2026-02-10", "to": "2026-02-01"},
            {"from": "2020-01-01", "to": "2021-06-01"},
        ],
    )
    async def test_a_bad_range_is_a_clear_422(
        self, client: httpx.AsyncClient, make_account: MakeAccount, params: dict[str, str]
    ) -> None:
        admin = await make_account(Role.ADMIN)
        response = await client.get(STATS, params=params, headers=admin.headers)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "stats_range_invalid"

    async def test_a_malformed_date_is_a_422(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        for bad in ("yesterday", "2026-13-01", "\x00"):
            response = await client.get(STATS, params={"from": bad}, headers=admin.headers)
            assert response.status_code == 422, bad
            assert response.json()["error"]["code"] == "invalid_request"

    async def test_only_administrators(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        for role in (Role.CLINICIAN, Role.RADIOLOGIST):
            account = await make_account(role)
            response = await client.get(STATS, headers=account.headers)
            assert response.status_code == 403, role
            assert response.json()["error"]["code"] == "forbidden"
        anonymous = await client.get(STATS)
        assert anonymous.status_code == 401
