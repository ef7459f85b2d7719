"""The upkeep jobs end to end on real storage (the local filesystem and a moto S3 server), on
PostgreSQL, with a real Orthanc as the PACS: an abandoned upload expires (its chunks deleted,
the uploader told), the stored bytes of a study delivered longer ago than the retention are
deleted (its details and receipts kept), and nothing of any other upload is touched."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.db import utcnow
from relaypacs.main import create_app
from relaypacs.state import app_state
from relaypacs.uploads.models import Upload, UploadChunk
from relaypacs.uploads.repository import chunk_key, recorded_chunk_keys
from relaypacs.uploads.upkeep import expire_abandoned, purge_delivered
from tests.api.conftest import CHUNK_SIZE, PASSWORD, Account
from tests.api.uploading import (
    API,
    Study,
    chunks_of,
    complete,
    init,
    make_study,
    put_chunk,
    send_all,
)
from tests.pacs import OrthancServer, run_orthanc
from tests.servers import moto_server

DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(
    scope="module",
    params=[("fs", "sqlite"), ("fs", "postgresql"), ("s3", "postgresql")],
    ids=["fs-sqlite", "fs-postgresql", "s3-postgresql"],
)
async def app(
    request: pytest.FixtureRequest,
    orthanc: OrthancServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[FastAPI]:
    store, database = request.param
    data_dir = tmp_path_factory.mktemp("upkeep")
    database_url = (
        f"sqlite+aiosqlite:///{data_dir / 'relaypacs.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    storage: dict[str, Any] = {}
    if store == "s3":
        storage = {
            "storage": "s3",
            "s3_endpoint_url": request.getfixturevalue("s3_url"),
            "s3_bucket": f"relaypacs-{uuid.uuid4().hex[:8]}",
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
            "s3_create_bucket": True,
        }
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        chunk_size=CHUNK_SIZE,
        secret_key="upkeep-test-signing-key-" + "u" * 32,
        totp_required_roles=[],
        rate_limit_login_ip="100000/minute",
        pacs_url=orthanc.dicomweb_url,
        pacs_username=orthanc.auth[0],
        pacs_password=orthanc.auth[1],
        pacs_profile="orthanc",
        forward_poll_seconds=0.2,
        scheduler=False,  # the jobs are called by the tests, and by nothing else meanwhile
        **storage,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as c:
        yield c


@pytest.fixture
async def clinician(app: FastAPI, client: httpx.AsyncClient) -> Account:
    username = f"upkeep{uuid.uuid4().hex[:8]}"
    async with app_state(app).db.sessionmaker() as session, session.begin():
        await create_user(session, username=username, password=PASSWORD, role=Role.CLINICIAN)
    response = await client.post(
        f"{API}/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return Account(username, Role.CLINICIAN, response.json()["access_token"])


async def stored_keys(app: FastAPI, upload_id: str) -> list[str]:
    async with app_state(app).db.sessionmaker() as session, session.begin():
        keys = await recorded_chunk_keys(session, uuid.UUID(upload_id))
    return [key for by_chunk in keys.values() for key in by_chunk.values()]


async def present(app: FastAPI, keys: list[str]) -> list[bool]:
    storage = app_state(app).storage
    return [await storage.exists(key) for key in keys]


async def set_times(app: FastAPI, upload_id: str, **values: dt.datetime) -> None:
    """Move an upload's clock back (the test's stand-in for the days passing)."""
    chunk_time = values.pop("chunks_at", None)
    async with app_state(app).db.sessionmaker() as session, session.begin():
        await session.execute(
            update(Upload).where(Upload.id == uuid.UUID(upload_id)).values(**values)
        )
        if chunk_time is not None:
            await session.execute(
                update(UploadChunk)
                .where(UploadChunk.upload_id == uuid.UUID(upload_id))
                .values(created_at=chunk_time)
            )


async def started_with_one_chunk(client: httpx.AsyncClient, account: Account) -> str:
    return (await started(client, account))[0]


async def started(client: httpx.AsyncClient, account: Account) -> tuple[str, Study]:
    """An upload of two files with the first one's chunk stored."""
    study = make_study(2)
    response = await init(client, account, study)
    assert response.status_code == 201, response.text
    upload_id: str = response.json()["id"]
    first = chunks_of(study.files[0])[0]
    stored = await put_chunk(client, account, upload_id, 0, 0, first)
    assert stored.status_code == 200, stored.text
    return upload_id, study


async def delivered(client: httpx.AsyncClient, account: Account) -> str:
    study = make_study(2)
    response = await init(client, account, study)
    assert response.status_code == 201, response.text
    upload_id: str = response.json()["id"]
    await send_all(client, account, upload_id, study)
    completed = await complete(client, account, upload_id)
    assert completed.status_code in (200, 202), completed.text
    async with asyncio.timeout(60):
        while True:
            view = await client.get(f"{API}/uploads/{upload_id}", headers=account.headers)
            if view.json()["status"] == "delivered":
                return upload_id
            assert view.json()["status"] in ("queued", "forwarding"), view.text
            await asyncio.sleep(0.2)


async def upload_view(client: httpx.AsyncClient, account: Account, upload_id: str) -> Any:
    response = await client.get(f"{API}/uploads/{upload_id}", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def timeline(client: httpx.AsyncClient, account: Account, upload_id: str) -> Any:
    response = await client.get(f"{API}/uploads/{upload_id}/timeline", headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()["steps"]


class TestExpiry:
    async def test_an_abandoned_upload_expires_and_loses_its_chunks_an_active_one_stays(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        abandoned, study = await started(client, clinician)
        active = await started_with_one_chunk(client, clinician)
        long_ago = utcnow() - 2 * DAY
        await set_times(app, abandoned, updated_at=long_ago, chunks_at=long_ago)
        # Untouched for two days too, but a chunk came an hour ago: still active.
        await set_times(app, active, updated_at=long_ago)
        abandoned_keys = await stored_keys(app, abandoned)
        active_keys = await stored_keys(app, active)
        assert await present(app, abandoned_keys + active_keys) == [True, True]

        state = app_state(app)
        assert await expire_abandoned(state.db, state.storage, idle=DAY) >= 1

        gone = await upload_view(client, clinician, abandoned)
        assert gone["status"] == "expired"
        assert gone["purged_at"] is not None
        assert gone["received_bytes"] == 0
        assert await present(app, abandoned_keys) == [False]
        kept = await upload_view(client, clinician, active)
        assert (kept["status"], kept["purged_at"]) == ("pending", None)
        assert await present(app, active_keys) == [True]
        # The uploader is told, once; nothing more is taken for it.
        notices = await client.get(f"{API}/notifications", headers=clinician.headers)
        expired = [n for n in notices.json()["items"] if n["kind"] == "upload_expired"]
        assert [n["related_id"] for n in expired] == [abandoned]
        refused = await complete(client, clinician, abandoned)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "upload_not_writable"
        late = study.files[1]
        too_late = await put_chunk(client, clinician, abandoned, 1, 0, late)
        assert too_late.status_code == 409, too_late.text
        assert too_late.json()["error"]["code"] == "upload_not_writable"
        late_key = chunk_key(uuid.UUID(abandoned), 1, 0, hashlib.sha256(late).hexdigest())
        assert await present(app, [late_key]) == [False]  # not kept either
        # The timeline says so: expired, then its parts deleted.
        steps = await timeline(client, clinician, abandoned)
        assert [s["step"] for s in steps][-2:] == ["expired", "purged"]
        assert steps[-2]["detail"] == "unfinished: no data received for 24 hours"
        assert steps[-1]["detail"] == "the parts received were deleted"
        # A second run finds nothing more to do for it.
        await expire_abandoned(state.db, state.storage, idle=DAY)
        notices = await client.get(f"{API}/notifications", headers=clinician.headers)
        assert sum(n["kind"] == "upload_expired" for n in notices.json()["items"]) == 1


class TestRetention:
    async def test_only_the_bytes_of_a_study_delivered_before_the_retention_are_deleted(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        old = await delivered(client, clinician)
        recent = await delivered(client, clinician)
        pending = await started_with_one_chunk(client, clinician)
        eight_days_ago = utcnow() - 8 * DAY
        await set_times(app, old, delivered_at=eight_days_ago)
        # Old too, but not delivered: never deleted, whatever its age.
        await set_times(app, pending, updated_at=eight_days_ago, created_at=eight_days_ago)
        keys = {u: await stored_keys(app, u) for u in (old, recent, pending)}
        for stored in keys.values():
            assert stored
            assert all(await present(app, stored))
        before = await upload_view(client, clinician, old)

        state = app_state(app)
        assert await purge_delivered(state.db, state.storage, kept=7 * DAY) >= 1

        assert not any(await present(app, keys[old]))
        assert all(await present(app, keys[recent]))
        assert all(await present(app, keys[pending]))
        after = await upload_view(client, clinician, old)
        assert after["status"] == "delivered"
        assert after["purged_at"] is not None
        # Its details, verdicts and receipts stay: only the bytes are gone.
        for field in ("metadata", "instance_count", "study_instance_uid", "forwarding"):
            assert after[field] == before[field]
        assert [f["forward_status"] for f in after["files"]] == ["confirmed", "confirmed"]
        for other in (recent, pending):
            assert (await upload_view(client, clinician, other))["purged_at"] is None
        steps = await timeline(client, clinician, old)
        assert steps[-1]["step"] == "purged"
        assert "retention" in steps[-1]["detail"]
        assert "purged" not in [s["step"] for s in await timeline(client, clinician, recent)]
        # Done once: a second run finds nothing more to delete.
        assert await purge_delivered(state.db, state.storage, kept=7 * DAY) == 0
