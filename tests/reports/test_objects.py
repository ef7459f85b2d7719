"""The sweep of the reports' objects that no row names (reports/objects.py), against the real
stores (a directory, and the S3 server the tests start) and the reports' real rows, on each
database: a cancelled write-back's instance, a failed sync's PDF, the objects of a report that
is gone are deleted once older than the grace period, and counted; every object a row names,
and any object younger than the grace period (a build under way), stays."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydicom.uid import generate_uid

from relaypacs.auth.models import Role
from relaypacs.db import utcnow
from relaypacs.jobs import retention
from relaypacs.reports import repository
from relaypacs.reports.models import CopyStatus, ReportPacsCopy, ReportStatus, ReportVersion
from relaypacs.reports.objects import (
    copy_key,
    named_by,
    pacs_pdf_key,
    sweep_orphans,
    version_pdf_key,
)
from relaypacs.reports.repository import StoredObjects
from relaypacs.state import app_state
from relaypacs.storage import FilesystemStorage, ObjectStorage
from tests.api.conftest import MakeAccount
from tests.reports.reporting import deliver
from tests.servers import moto_server
from tests.storage.conftest import make_s3_storage


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["fs", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStorage]:
    """A fresh store of each kind (the rows are the app's; the objects are put here)."""
    backend: ObjectStorage
    if request.param == "fs":
        backend = FilesystemStorage(tmp_path / "objects")
    else:
        backend = make_s3_storage(request.getfixturevalue("s3_endpoint"))
    async with backend:
        yield backend


def _swept() -> float:
    return REGISTRY.get_sample_value("relaypacs_report_orphan_objects_deleted_total") or 0.0


async def _signed(
    app: FastAPI,
    report_id: uuid.UUID,
    sources: list[str],
    *,
    pdf_key: str,
    copies: Sequence[tuple[int, str]] = (),
) -> None:
    """The report's rows as signing (source "gateway") or the sync (source "pacs") leave them,
    one version per source, and its written-back copies (version, storage key)."""
    async with app_state(app).db.sessionmaker() as session, session.begin():
        report = await repository.get_report(session, report_id, lock=True)
        assert report is not None
        for number, source in enumerate(sources, start=1):
            await repository.add_version(
                session,
                ReportVersion(
                    report_id=report_id,
                    version=number,
                    findings="Findings.",
                    impression="Impression.",
                    signed_by_id=None,
                    source=source,
                ),
            )
        report.version = len(sources)
        report.status = ReportStatus.READY if len(sources) == 1 else ReportStatus.AMENDED
        report.pdf_key = pdf_key
        for version, key in copies:
            repository.add_copy(
                session,
                ReportPacsCopy(
                    report_id=report_id,
                    version=version,
                    target="pacs",
                    sop_instance_uid=generate_uid(),
                    series_instance_uid=generate_uid(),
                    storage_key=key,
                    size=3,
                    sha256="0" * 64,
                    status=CopyStatus.CONFIRMED,
                ),
            )


async def _keys(store: ObjectStorage) -> set[str]:
    return {key async for key in store.list("")}


async def test_objects_no_row_names_are_deleted_once_older_than_the_grace_period(
    app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount, store: ObjectStorage
) -> None:
    uploader = await make_account(Role.CLINICIAN)
    ids = [uuid.UUID((await deliver(app, client, uploader))[1]) for _ in range(3)]
    written_back, amended, from_pacs = ids
    # Signed in the gateway and written back.
    instance = copy_key(written_back, 1, generate_uid())
    await _signed(
        app,
        written_back,
        ["gateway"],
        pdf_key=version_pdf_key(written_back, 1),
        copies=[(1, instance)],
    )
    # Made ready from the PACS's PDF, then amended in the gateway.
    amended_pacs_pdf = pacs_pdf_key(amended, 1)
    await _signed(app, amended, ["pacs", "gateway"], pdf_key=version_pdf_key(amended, 2))
    # Made ready from the PACS's PDF (the second run: the first one failed after its put).
    kept_pacs_pdf, failed_pacs_pdf = pacs_pdf_key(from_pacs, 1), pacs_pdf_key(from_pacs, 1)
    await _signed(app, from_pacs, ["pacs"], pdf_key=kept_pacs_pdf)

    named = {
        instance,
        version_pdf_key(written_back, 1),
        amended_pacs_pdf,
        version_pdf_key(amended, 2),
        version_pdf_key(amended, 1),  # an older version's PDF made by the gateway
        kept_pacs_pdf,
        "uploads/elsewhere/0/0-abc",  # not under the reports' prefix
    }
    gone = uuid.uuid4()  # a report that no longer exists (its upload deleted)
    orphans = {
        copy_key(written_back, 1, generate_uid()),  # a write-back cancelled after its put
        failed_pacs_pdf,
        copy_key(amended, 2, generate_uid()),
        version_pdf_key(gone, 1),
        pacs_pdf_key(gone, 1),
        "reports/not-a-report/x.pdf",
    }
    for key in named | orphans:
        await store.put(key, b"pdf")
    db = app_state(app).db

    # Everything is younger than the default grace period (a day): nothing is touched.
    before = _swept()
    assert await sweep_orphans(db, store) == 0
    assert await _keys(store) == named | orphans

    # Older than a short grace period, but for an object just stored (a build under way).
    await asyncio.sleep(3.2)  # S3 keeps whole seconds
    under_way = pacs_pdf_key(from_pacs, 2)
    await store.put(under_way, b"pdf")
    assert await sweep_orphans(db, store, grace=dt.timedelta(seconds=2)) == len(orphans)
    assert await _keys(store) == named | {under_way}
    assert _swept() - before == len(orphans)
    # Later runs find nothing more to delete among what the rows name.
    assert await sweep_orphans(db, store, grace=dt.timedelta(seconds=2)) == 0
    assert named <= await _keys(store)


def test_the_pacs_pdf_of_the_latest_version_is_only_the_one_its_row_names() -> None:
    """Of the PACS's PDFs of the latest version, only the one `pdf_key` names is kept (another is
    a failed run's); those of a version amended since are kept, as before they had keys of
    their own."""
    report_id = uuid.uuid4()
    latest, other = pacs_pdf_key(report_id, 2), pacs_pdf_key(report_id, 2)
    older = pacs_pdf_key(report_id, 1)
    rows = StoredObjects(version=2, pdf_key=latest, versions={1: "pacs", 2: "pacs"})
    assert named_by(rows, report_id, latest)
    assert not named_by(rows, report_id, other)
    assert named_by(rows, report_id, older)
    gateway_first = StoredObjects(version=2, pdf_key=latest, versions={1: "gateway", 2: "pacs"})
    assert not named_by(gateway_first, report_id, older)  # version 1 was never the PACS's
    assert not named_by(None, report_id, latest)  # the report is gone


async def test_the_retention_job_sweeps_them(
    app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    """The scheduled `retention` run sweeps: a write-back's instance left two days ago by a
    cancelled build is deleted, one stored a minute ago is not."""
    uploader = await make_account(Role.CLINICIAN)
    report_id = uuid.UUID((await deliver(app, client, uploader))[1])
    state = app_state(app)
    left, recent = copy_key(report_id, 1, generate_uid()), copy_key(report_id, 1, generate_uid())
    for key in (left, recent):
        await state.storage.put(key, b"dcm")
    path = state.storage.local_path(left)  # the gateway's own store is a directory here
    assert path is not None
    two_days_ago = (utcnow() - dt.timedelta(days=2)).timestamp()
    os.utime(path, (two_days_ago, two_days_ago))
    await retention(state.db, state.storage, kept=dt.timedelta(days=7))
    assert [await state.storage.exists(k) for k in (left, recent)] == [False, True]
