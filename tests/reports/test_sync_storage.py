"""The report sync stores the PACS's PDF with no transaction open, against a real Orthanc and
the real stores (the gateway's directory, the S3 server the tests start), on each database:

- a store that takes the PDF and then hangs holds no lock: the report is signed in the gateway
  meanwhile, and that signature wins (the PACS's PDF is not the report's, and is deleted);
- a store that fails mid-write (the bytes stored, the answer lost) leaves the report waiting
  and nothing behind; the next run, with the store working, makes it ready with the PDF.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.main import create_app
from relaypacs.reports import repository
from relaypacs.reports.sync import SyncResult, sync_reports_from_pacs
from relaypacs.state import app_state
from relaypacs.storage import ObjectStorage, S3Storage
from relaypacs.storage.faulty import FaultyStorage
from tests.api.conftest import MakeAccount
from tests.pacs import OrthancServer, run_orthanc
from tests.reports.reporting import API, assign, sign
from tests.reports.test_pacs import (
    LIVENESS_SECONDS,
    PDF,
    add_to_orthanc,
    delivered,
    forwarding_settings,
    get_json,
    make_pdf_instance,
    make_sr,
)
from tests.servers import moto_server
from tests.storage.conftest import make_s3_storage


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
async def app(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, orthanc: OrthancServer
) -> AsyncIterator[FastAPI]:
    """The gateway forwarding to the Orthanc (its worker in this process)."""
    settings = forwarding_settings(
        tmp_path_factory.mktemp("sync-storage"), database_url, orthanc, orthanc.dicomweb_url
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["fs", "s3"])
async def store(request: pytest.FixtureRequest, app: FastAPI) -> AsyncIterator[ObjectStorage]:
    """The gateway's own store (a directory), or a bucket of the S3 server."""
    if request.param == "fs":
        yield app_state(app).storage
        return
    s3: S3Storage
    async with make_s3_storage(request.getfixturevalue("s3_endpoint")) as s3:
        yield s3


class HoldingStorage(FaultyStorage):
    """Stores a put under `prefix` and then does not answer until released (an S3 that took the
    bytes and hangs before acknowledging them)."""

    def __init__(self, inner: ObjectStorage, prefix: str) -> None:
        super().__init__(inner)
        self.prefix = prefix
        self.stored = asyncio.Event()
        self.release = asyncio.Event()

    async def put(
        self,
        key: str,
        data: bytes | memoryview,
        *,
        md5: str | None = None,
        sha256: str | None = None,
    ) -> None:
        await super().put(key, data, md5=md5, sha256=sha256)
        if key.startswith(self.prefix):
            self.stored.set()
            await self.release.wait()


async def _sync(app: FastAPI, storage: ObjectStorage) -> SyncResult:
    state = app_state(app)
    return await sync_reports_from_pacs(
        sessionmaker=state.db.sessionmaker, settings=state.settings, storage=storage
    )


async def _keys(storage: ObjectStorage, prefix: str) -> list[str]:
    return [key async for key in storage.list(prefix)]


async def test_a_store_that_hangs_holds_no_lock_and_a_signature_meanwhile_wins(
    app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount, orthanc: OrthancServer
) -> None:
    uploader = await make_account(Role.CLINICIAN)
    admin = await make_account(Role.ADMIN)
    radiologist = await make_account(Role.RADIOLOGIST)
    study, report_id = await delivered(app, client, uploader)
    assert (await assign(client, admin, report_id, radiologist)).status_code == 200
    add_to_orthanc(orthanc, make_pdf_instance(study, PDF)[1])
    storage = app_state(app).storage
    holding = HoldingStorage(storage, f"reports/{report_id}/")

    sync = asyncio.create_task(_sync(app, holding))
    try:
        async with asyncio.timeout(60):
            await holding.stored.wait()
        # The store took the PACS's PDF and has not answered: the radiologist signs meanwhile.
        signed = await asyncio.wait_for(
            sign(client, radiologist, report_id, "No fracture.", "Normal."), LIVENESS_SECONDS
        )
        assert signed.status_code == 200, signed.text
    finally:
        holding.release.set()
        result = await sync
    assert report_id not in {str(r) for r in result.ready}

    # The signature is the report's; the PACS's PDF is neither served nor kept.
    report = await get_json(client, f"{API}/reports/{report_id}", uploader)
    assert report["status"] == "ready"
    assert [(v["version"], v["source"]) for v in report["versions"]] == [(1, "gateway")]
    assert report["latest"]["findings"] == "No fracture."
    pdf = await client.get(f"{API}/reports/{report_id}/pdf", headers=uploader.headers)
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF")
    assert pdf.content != PDF
    assert [k for k in await _keys(storage, f"reports/{report_id}/") if "-pacs-" in k] == []


async def test_a_store_failing_mid_write_leaves_the_report_waiting_and_nothing_behind(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    orthanc: OrthancServer,
    store: ObjectStorage,
) -> None:
    uploader = await make_account(Role.CLINICIAN)
    study, report_id = await delivered(app, client, uploader)
    add_to_orthanc(orthanc, make_sr(study, {"Findings": ["Small effusion."]}))
    add_to_orthanc(orthanc, make_pdf_instance(study, PDF)[1])
    prefix = f"reports/{report_id}/"

    # Fault injection: the store keeps the bytes, then fails (the acknowledgement lost).
    failing = FaultyStorage(store, fail_put_after=0, store_before_failing=True)
    result = await _sync(app, failing)
    assert "storage: StorageUnavailable" in result.errors
    assert report_id not in {str(r) for r in result.ready}
    report = await get_json(client, f"{API}/reports/{report_id}", uploader)
    assert report["status"] == "pending"
    assert report["versions"] == []
    assert await _keys(store, prefix) == []

    # Nothing lost: the next run, with the store working, makes it ready with the PDF as is.
    result = await _sync(app, store)
    assert report_id in {str(r) for r in result.ready}
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        row = await repository.get_report(session, uuid.UUID(report_id))
    assert row is not None
    assert row.pdf_key is not None
    assert row.pdf_key.startswith(f"{prefix}v1-pacs-")
    assert await _keys(store, prefix) == [row.pdf_key]
    assert await store.get(row.pdf_key) == PDF
    report = await get_json(client, f"{API}/reports/{report_id}", uploader)
    assert report["latest"]["findings"] == "Small effusion."
    if store is app_state(app).storage:  # what the gateway serves
        pdf = await client.get(f"{API}/reports/{report_id}/pdf", headers=uploader.headers)
        assert pdf.content == PDF
