"""Reports from the PACS and back to it, against a real Orthanc (DICOMweb plugin) and the
in-process gateway forwarding to it, on each database.

- The sync (called directly, as the scheduler will): an SR and an Encapsulated PDF added to a
  delivered study through Orthanc's own REST API make the report ready with the SR's text and
  the PDF as is; the uploader is told; another clinician still gets 404; an SR without text or
  a PDF of 0 bytes is skipped with its reason, nothing lost.
- The write-back: a report signed (and amended) in the gateway appears in Orthanc as an
  Encapsulated PDF instance of its study; its SOP Instance UID is `pacs_receipt_id`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select, update

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.models import Role
from relaypacs.config import Settings
from relaypacs.db import utcnow
from relaypacs.devtools.synth import DEFAULT_PATIENT
from relaypacs.dicom.documents import (
    BASIC_TEXT_SR,
    COMPREHENSIVE_SR,
    ENCAPSULATED_PDF,
    PdfInstance,
    build_encapsulated_pdf,
)
from relaypacs.jobs import retention
from relaypacs.main import create_app
from relaypacs.reports import repository
from relaypacs.reports.objects import version_pdf_key
from relaypacs.reports.sync import SyncResult, sync_reports_from_pacs
from relaypacs.state import app_state
from relaypacs.uploads.models import Upload
from tests.api.conftest import CHUNK_SIZE, PASSWORD, Account, MakeAccount
from tests.api.uploading import Study, error_code, make_study, upload_study
from tests.pacs import OrthancServer, ProxyRecord, RecordingProxy, run_orthanc
from tests.reports.reporting import API, assign, sign
from tests.servers import free_port

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(orthanc: OrthancServer) -> Iterator[RecordingProxy]:
    """In front of the Orthanc, byte for byte: which request of the gateway's is in flight."""
    with RecordingProxy(orthanc.base_url) as recording:
        yield recording


def forwarding_settings(
    data_dir: Path, database_url: str, orthanc: OrthancServer, pacs_url: str
) -> Settings:
    """A gateway forwarding to `orthanc` at `pacs_url` (itself, or a proxy before it), with
    quick retries."""
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        chunk_size=CHUNK_SIZE,
        dicom_workers=2,
        secret_key="test-signing-key-" + "x" * 32,
        totp_required_roles=[],
        rate_limit_login_ip="100000/minute",
        pacs_url=pacs_url,
        pacs_username=orthanc.auth[0],
        pacs_password=orthanc.auth[1],
        pacs_profile="orthanc",
        forward_retry_delays=[0.2, 0.4, 0.8],
        forward_retry_interval=1.0,
        forward_poll_seconds=0.2,
    )


@pytest.fixture(scope="module")
async def app(
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    proxy: RecordingProxy,
) -> AsyncIterator[FastAPI]:
    """The gateway forwarding to the Orthanc (its worker in this process), through `proxy`."""
    settings = forwarding_settings(
        tmp_path_factory.mktemp("pacs-reports"), database_url, orthanc, proxy.dicomweb_url
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


# --- helpers -----------------------------------------------------------------------------


async def delivered(
    app: FastAPI, client: httpx.AsyncClient, uploader: Account
) -> tuple[Study, str]:
    """A study uploaded and delivered to Orthanc; returns it and its report's id."""
    study = make_study(2)
    done = await upload_study(client, uploader, study)
    assert done.status_code in (200, 202), done.text
    upload_id = done.json()["id"]
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = (await client.get(f"{API}/uploads/{upload_id}", headers=uploader.headers)).json()[
            "status"
        ]
        if status in ("delivered", "failed"):
            break
        await asyncio.sleep(0.2)
    assert status == "delivered"
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        report = await repository.report_of_upload(session, uuid.UUID(upload_id))
    assert report is not None
    return study, str(report.id)


def _part10(ds: Dataset, sop_class: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _base(study: Study, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = DEFAULT_PATIENT.name
    ds.PatientID = DEFAULT_PATIENT.patient_id
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = 50
    ds.InstanceNumber = 1
    return ds


def _code(meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = meaning[:8].upper()
    code.CodingSchemeDesignator = "99TEST"
    code.CodeMeaning = meaning
    return code


def _text(meaning: str, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [_code(meaning)]
    item.TextValue = text
    return item


def make_sr(study: Study, sections: dict[str, list[str]], sop_class: str = BASIC_TEXT_SR) -> bytes:
    """A Structured Report: a root container holding one container per section, each with
    its text items (a section with no text items is a container with nothing in it)."""
    ds = _base(study, "SR")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("Radiology Report")]
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    sections_items = []
    for heading, texts in sections.items():
        section = Dataset()
        section.RelationshipType = "CONTAINS"
        section.ValueType = "CONTAINER"
        section.ContinuityOfContent = "SEPARATE"
        section.ConceptNameCodeSequence = [_code(heading)]
        section.ContentSequence = [_text(heading, t) for t in texts]
        sections_items.append(section)
    ds.ContentSequence = sections_items
    return _part10(ds, sop_class)


def make_pdf_instance(study: Study, pdf: bytes) -> tuple[str, bytes]:
    uid = generate_uid()
    data = build_encapsulated_pdf(
        pdf,
        PdfInstance(
            study_instance_uid=study.uid,
            series_instance_uid=generate_uid(),
            sop_instance_uid=uid,
            series_number=60,
            instance_number=1,
            title="Outside report",
            created_at=dt.datetime.now(dt.UTC),
        ),
        {"PatientName": DEFAULT_PATIENT.name, "PatientID": DEFAULT_PATIENT.patient_id},
    )
    return uid, data


def add_to_orthanc(orthanc: OrthancServer, data: bytes) -> None:
    """Through Orthanc's own REST API, as a modality or a reporting system would."""
    with orthanc.client() as http:
        response = http.post("/instances", content=data)
    assert response.status_code == 200, response.text


def sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)


async def run_sync(app: FastAPI) -> SyncResult:
    state = app_state(app)
    return await sync_reports_from_pacs(
        sessionmaker=state.db.sessionmaker, settings=state.settings, storage=state.storage
    )


async def get_json(client: httpx.AsyncClient, url: str, account: Account) -> Any:
    response = await client.get(url, headers=account.headers)
    assert response.status_code == 200, response.text
    return response.json()


def mine(result: SyncResult, report_id: str) -> list[str]:
    return sorted(s.reason for s in result.skipped if str(s.report_id) == report_id)


# --- reports from the PACS -----------------------------------------------------------------


async def test_an_sr_and_a_pdf_added_in_the_pacs_make_the_report_ready(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    orthanc: OrthancServer,
) -> None:
    uploader = await make_account(Role.CLINICIAN)
    other = await make_account(Role.CLINICIAN)
    study, report_id = await delivered(app, client, uploader)
    before = await run_sync(app)
    assert report_id not in {str(r) for r in before.ready}  # the study's own CT images

    sr = make_sr(
        study,
        {"Findings": ["No focal consolidation.", "Heart size normal."], "Impression": ["Normal."]},
        COMPREHENSIVE_SR,
    )
    pdf_uid, pdf_instance = make_pdf_instance(study, PDF)
    add_to_orthanc(orthanc, sr)
    add_to_orthanc(orthanc, pdf_instance)

    result = await run_sync(app)
    assert report_id in {str(r) for r in result.ready}
    assert mine(result, report_id) == []

    report = await get_json(client, f"{API}/reports/{report_id}", uploader)
    assert report["status"] == "ready"
    latest = report["latest"]
    assert latest["source"] == "pacs"
    assert latest["source_instance_uid"] == sop_uid(sr)  # the SR's text is the report's
    assert latest["signed_by"] is None
    assert "No focal consolidation." in latest["findings"]
    assert "Heart size normal." in latest["findings"]
    assert latest["impression"] == "Normal."
    pdf = await client.get(f"{API}/reports/{report_id}/pdf", headers=uploader.headers)
    assert pdf.status_code == 200
    assert pdf.content == PDF  # kept as is

    notices = await get_json(client, f"{API}/notifications", uploader)
    ready = [n for n in notices["items"] if n["kind"] == "report_ready"]
    assert [n["related_id"] for n in ready] == [report_id]
    timeline = await get_json(client, f"{API}/uploads/{report['upload_id']}/timeline", uploader)
    assert {"step": "report_ready", "detail": "from the PACS"} in [
        {"step": s["step"], "detail": s["detail"]} for s in timeline["steps"]
    ]

    # Another clinician is told nothing more than of a missing report.
    for url in (f"{API}/reports/{report_id}", f"{API}/reports/{report_id}/pdf"):
        refused = await client.get(url, headers=other.headers)
        assert refused.status_code == 404
        assert error_code(refused) == "report_not_found"

    # A later run changes nothing: the report is ready, the instances were used.
    again = await run_sync(app)
    assert report_id not in {str(r) for r in again.ready}
    report = await get_json(client, f"{API}/reports/{report_id}", uploader)
    assert [v["version"] for v in report["versions"]] == [1]
    assert pdf_uid != latest["source_instance_uid"]


async def test_an_sr_without_text_and_an_empty_pdf_are_skipped_and_nothing_is_lost(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    orthanc: OrthancServer,
) -> None:
    uploader = await make_account(Role.CLINICIAN)
    study, report_id = await delivered(app, client, uploader)
    add_to_orthanc(orthanc, make_sr(study, {"Findings": []}))  # a heading, no text
    add_to_orthanc(orthanc, make_pdf_instance(study, b"")[1])  # a PDF of 0 bytes

    result = await run_sync(app)
    assert mine(result, report_id) == ["empty_pdf", "sr_without_text"]
    assert report_id not in {str(r) for r in result.ready}
    report = await get_json(client, f"{API}/reports/{report_id}", uploader)
    assert report["status"] == "pending"
    assert report["versions"] == []
    notices = await get_json(client, f"{API}/notifications", uploader)
    assert [n for n in notices["items"] if n["kind"] == "report_ready"] == []
    timeline = await get_json(client, f"{API}/uploads/{report['upload_id']}/timeline", uploader)
    skipped = sorted(
        s["detail"] for s in timeline["steps"] if s["step"] == "report_from_pacs_skipped"
    )
    assert skipped == ["empty_pdf", "sr_without_text"]

    # Each is looked at once; a usable report that comes later still makes it ready.
    assert mine(await run_sync(app), report_id) == []
    add_to_orthanc(orthanc, make_sr(study, {"Findings": ["Small effusion."]}))
    result = await run_sync(app)
    assert report_id in {str(r) for r in result.ready}
    report = await get_json(client, f"{API}/reports/{report_id}", uploader)
    assert report["status"] == "ready"
    assert report["latest"]["findings"] == "Small effusion."


# --- write-back -------------------------------------------------------------------------------


async def _receipt(
    client: httpx.AsyncClient, report_id: str, account: Account, version: int
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        report: dict[str, Any] = await get_json(client, f"{API}/reports/{report_id}", account)
        latest = report["latest"]
        if latest["version"] == version and latest["pacs_receipt_id"]:
            return report
        assert time.monotonic() < deadline, report
        await asyncio.sleep(0.2)


def orthanc_tags(orthanc: OrthancServer, sop_instance_uid: str) -> tuple[dict[str, Any], bytes]:
    orthanc_id = orthanc.lookup_instance(sop_instance_uid)
    assert orthanc_id is not None
    with orthanc.client() as http:
        tags = http.get(f"/instances/{orthanc_id}/simplified-tags").json()
    return tags, orthanc.instance_file(orthanc_id)


async def test_a_report_signed_in_the_gateway_is_stored_into_its_study_in_the_pacs(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    orthanc: OrthancServer,
) -> None:
    uploader = await make_account(Role.CLINICIAN)
    admin = await make_account(Role.ADMIN)
    radiologist = await make_account(Role.RADIOLOGIST)
    study, report_id = await delivered(app, client, uploader)
    assert (await assign(client, admin, report_id, radiologist)).status_code == 200
    signed = await sign(client, radiologist, report_id, "No fracture.", "Normal.")
    assert signed.status_code == 200, signed.text

    report = await _receipt(client, report_id, uploader, 1)
    receipt = report["pacs_receipt_id"]
    assert receipt == report["latest"]["pacs_receipt_id"]
    assert orthanc.lookup_instance(receipt) is not None
    listed = orthanc.sop_instance_uids(study.uid)
    assert receipt in listed
    assert len(listed) == 3  # the study's 2 images and the report
    tags, stored = orthanc_tags(orthanc, receipt)
    assert tags["StudyInstanceUID"] == study.uid
    assert tags["SOPClassUID"] == ENCAPSULATED_PDF
    assert tags["Modality"] == "DOC"
    assert tags["PatientID"] == DEFAULT_PATIENT.patient_id
    assert tags["PatientName"] == DEFAULT_PATIENT.name
    assert tags["SeriesInstanceUID"] not in {
        str(pydicom.dcmread(io.BytesIO(f)).SeriesInstanceUID) for f in study.files
    }
    dataset = pydicom.dcmread(io.BytesIO(stored))
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    pdf = await client.get(f"{API}/reports/{report_id}/pdf", headers=uploader.headers)
    assert bytes(dataset.EncapsulatedDocument)[: dataset.EncapsulatedDocumentLength] == pdf.content

    # An amendment is stored too, as a new instance; the receipt follows it.
    amended = await client.post(
        f"{API}/reports/{report_id}/amend",
        json={"findings": "Hairline fracture.", "impression": "Fracture.", "reason": "Re-read."},
        headers=radiologist.headers,
    )
    assert amended.status_code == 200, amended.text
    report = await _receipt(client, report_id, uploader, 2)
    second = report["pacs_receipt_id"]
    assert second != receipt
    assert [v["pacs_receipt_id"] for v in report["versions"]] == [receipt, second]
    assert {receipt, second} <= orthanc.sop_instance_uids(study.uid)
    timeline = await get_json(client, f"{API}/uploads/{report['upload_id']}/timeline", uploader)
    stored_steps = [s["detail"] for s in timeline["steps"] if s["step"] == "report_stored_in_pacs"]
    assert stored_steps == ["version 1", "version 2"]
    # Notified once per signature, never of the write-back.
    notices = await get_json(client, f"{API}/notifications", uploader)
    assert sorted(n["kind"] for n in notices["items"]) == [
        "report_amended",
        "report_ready",
        "upload_delivered",
        "upload_received",
        "upload_validated",
    ]

    # The sync never takes the gateway's own report back.
    result = await run_sync(app)
    assert report_id not in {str(r) for r in result.ready}
    assert [v["source"] for v in report["versions"]] == ["gateway", "gateway"]


# Long enough for any write of a working gateway, well below the PACS read timeout (60 s): only
# a bound so that the broken case fails instead of hanging, not a measure of speed.
LIVENESS_SECONDS = 20.0


async def test_a_pacs_that_hangs_during_a_write_back_blocks_no_other_write(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    orthanc: OrthancServer,
    proxy: RecordingProxy,
) -> None:
    """The write-back asks the PACS for the study's attributes: while that request hangs (the
    Orthanc frozen by SIGSTOP), a login and an amendment of the same report complete, each
    while the PACS still has not answered; once the PACS answers, the amended version is
    stored into the study."""
    uploader = await make_account(Role.CLINICIAN)
    admin = await make_account(Role.ADMIN)
    radiologist = await make_account(Role.RADIOLOGIST)
    latecomer = await make_account(Role.CLINICIAN)
    study, report_id = await delivered(app, client, uploader)
    assert (await assign(client, admin, report_id, radiologist)).status_code == 200

    def study_query() -> ProxyRecord | None:
        for record in proxy.records:
            if record.method == "GET" and f"StudyInstanceUID={study.uid}" in record.path:
                return record
        return None

    writes: dict[str, httpx.Response] = {}
    pacs_answered_first: dict[str, bool] = {}

    async def write(name: str, request: Awaitable[httpx.Response]) -> None:
        writes[name] = await request
        query = study_query()
        pacs_answered_first[name] = query is None or query.finished is not None

    tasks: set[asyncio.Task[None]] = set()
    orthanc.freeze()
    try:
        signed = await sign(client, radiologist, report_id, "No fracture.", "Normal.")
        assert signed.status_code == 200, signed.text
        # The worker claimed the report job and waits for the frozen PACS's answer.
        deadline = time.monotonic() + 30
        while study_query() is None:
            assert time.monotonic() < deadline, "the write-back never asked the PACS"
            await asyncio.sleep(0.05)
        tasks |= {
            asyncio.create_task(
                write(
                    "login",
                    client.post(
                        f"{API}/auth/login",
                        json={"username": latecomer.username, "password": PASSWORD},
                    ),
                )
            ),
            asyncio.create_task(
                write(
                    "amend",
                    client.post(
                        f"{API}/reports/{report_id}/amend",
                        json={
                            "findings": "Hairline fracture.",
                            "impression": "Fracture.",
                            "reason": "Re-read.",
                        },
                        headers=radiologist.headers,
                    ),
                )
            ),
        }
        await asyncio.wait(tasks, timeout=LIVENESS_SECONDS)
        query = study_query()
        assert query is not None
        assert query.finished is None  # still frozen: nothing answered yet
        assert orthanc.frozen
    finally:
        orthanc.thaw()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Both writes were done while the PACS had not answered the write-back's request.
    assert pacs_answered_first == {"login": False, "amend": False}
    assert writes["login"].status_code == 200, writes["login"].text
    assert writes["amend"].status_code == 200, writes["amend"].text

    # Once the PACS answers, the write-back goes on: the latest version is stored.
    report = await _receipt(client, report_id, uploader, 2)
    receipt = report["pacs_receipt_id"]
    assert receipt in orthanc.sop_instance_uids(study.uid)
    tags, _ = orthanc_tags(orthanc, receipt)
    assert tags["StudyInstanceUID"] == study.uid
    assert tags["PatientID"] == DEFAULT_PATIENT.patient_id


async def test_a_pacs_that_does_not_answer_leaves_every_report_as_it_was(
    app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount, orthanc: OrthancServer
) -> None:
    uploader = await make_account(Role.CLINICIAN)
    study, report_id = await delivered(app, client, uploader)
    add_to_orthanc(orthanc, make_sr(study, {"Findings": ["Seen while the PACS was down."]}))
    state = app_state(app)
    (target,) = state.settings.pacs_targets
    # Fault injection: the same target's name at an address where nothing listens.
    down = target.model_copy(update={"url": f"http://127.0.0.1:{free_port()}/dicom-web"})
    settings = state.settings.model_copy(update={"pacs_targets": [down]})
    result = await sync_reports_from_pacs(
        sessionmaker=state.db.sessionmaker, settings=settings, storage=state.storage
    )
    assert result.errors == [f"{target.name}: ConnectError"]
    assert result.ready == []
    report = await get_json(client, f"{API}/reports/{report_id}", uploader)
    assert report["status"] == "pending"
    # Nothing was lost: once the PACS answers, the next run finds the report.
    assert report_id in {str(r) for r in (await run_sync(app)).ready}


# --- retention of the report copies ------------------------------------------------------------


async def _stored(app: FastAPI, keys: list[str]) -> list[bool]:
    storage = app_state(app).storage
    return [await storage.exists(key) for key in keys]


async def test_retention_deletes_the_copies_of_versions_the_pacs_holds_and_keeps_the_others(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    orthanc: OrthancServer,
) -> None:
    """A study purged by retention: the gateway's copies of each report version the PACS holds
    (its Encapsulated PDF instance, its PDF) are deleted; a version not yet written back keeps
    them; the PDF is made again from the database when asked for."""
    uploader = await make_account(Role.CLINICIAN)
    admin = await make_account(Role.ADMIN)
    radiologist = await make_account(Role.RADIOLOGIST)
    _, report_id = await delivered(app, client, uploader)
    assert (await assign(client, admin, report_id, radiologist)).status_code == 200
    assert (
        await sign(client, radiologist, report_id, "No fracture.", "Normal.")
    ).status_code == 200
    first = (await _receipt(client, report_id, uploader, 1))["pacs_receipt_id"]
    state = app_state(app)
    rid = uuid.UUID(report_id)

    async def copies() -> dict[int, Any]:
        async with state.db.read_sessionmaker() as session, session.begin():
            return {c.version: c for c in await repository.copies(session, rid)}

    v1_keys = [(await copies())[1].storage_key, version_pdf_key(rid, 1)]
    assert await _stored(app, v1_keys) == [True, True]

    # Version 2 is signed while the PACS is stopped (refusing connections, so the write-back
    # fails fast and is retried): not written back yet.
    await asyncio.to_thread(orthanc.stop)
    try:
        amended = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={
                "findings": "Hairline fracture.",
                "impression": "Fracture.",
                "reason": "Re-read.",
            },
            headers=radiologist.headers,
        )
        assert amended.status_code == 200, amended.text
        v2_pdf = await client.get(f"{API}/reports/{report_id}/pdf", headers=uploader.headers)
        assert v2_pdf.status_code == 200
        # The study was delivered eight days ago: retention deletes its bytes, then the copies
        # of version 1 (at the PACS), not version 2's PDF (never written back).
        upload_id = uuid.UUID(
            (await get_json(client, f"{API}/reports/{report_id}", uploader))["upload_id"]
        )
        async with state.db.sessionmaker() as session, session.begin():
            await session.execute(
                update(Upload)
                .where(Upload.id == upload_id)
                .values(delivered_at=utcnow() - dt.timedelta(days=8))
            )
        await retention(state.db, state.storage, kept=dt.timedelta(days=7))
        assert await _stored(app, v1_keys) == [False, False]
        assert await _stored(app, [version_pdf_key(rid, 2)]) == [True]
        now = await copies()
        assert now[1].released_at is not None
        assert 2 not in now or now[2].released_at is None
        async with state.db.read_sessionmaker() as session, session.begin():
            report = await repository.get_report(session, rid)
            assert report is not None
            assert report.pdf_key == version_pdf_key(rid, 2)
    finally:
        await asyncio.to_thread(orthanc.start)

    # Once the PACS holds version 2 too, the next run deletes its copies; the PDF is made again
    # from the signed versions when asked for (and kept again).
    report_view = await _receipt(client, report_id, uploader, 2)
    assert [v["pacs_receipt_id"] for v in report_view["versions"]][:1] == [first]  # kept
    v2_keys = [(await copies())[2].storage_key, version_pdf_key(rid, 2)]
    assert await _stored(app, v2_keys) == [True, True]
    await retention(state.db, state.storage, kept=dt.timedelta(days=7))
    assert await _stored(app, v2_keys) == [False, False]
    async with state.db.read_sessionmaker() as session, session.begin():
        report = await repository.get_report(session, rid)
        assert report is not None
        assert report.pdf_key is None
        events = (
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "report.purge", AuditEvent.object_id == report_id
                )
            )
        ).all()
    assert sorted(e.details["version"] for e in events) == [1, 2]
    again = await client.get(f"{API}/reports/{report_id}/pdf", headers=uploader.headers)
    assert again.status_code == 200
    assert again.content.startswith(b"%PDF")
    assert await _stored(app, [version_pdf_key(rid, 2)]) == [True]
    # The PACS still holds both versions.
    assert orthanc.lookup_instance(first) is not None
