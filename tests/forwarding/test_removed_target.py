"""A forward job whose PACS target was removed from the settings: no worker would ever claim it
(it waited forever). It fails with `target_removed` once no worker touched it for the grace, as
the uploader, the timeline and the audit log see; an administrator's retry sends the study to
the current target (a real Orthanc). A report write-back job for a removed target fails the
same way, the study's status untouched. On a database of its own (SQLite and PostgreSQL): a
gateway that fails the jobs of targets it does not know must not see the other tests' queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import PacsTarget, Settings
from relaypacs.forwarding.models import ForwardJob, JobKind, JobStatus
from relaypacs.forwarding.service import enqueue_report
from relaypacs.main import create_app
from relaypacs.state import app_state
from tests.api.conftest import CHUNK_SIZE, PASSWORD, Account
from tests.api.uploading import API, make_study, read_uid, upload_study
from tests.conftest import unique_name
from tests.pacs import OrthancServer, run_orthanc
from tests.scheduler.conftest import fresh_database_url
from tests.servers import free_port

__all__ = ["fresh_database_url"]

Gateway = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def gateway(fresh_database_url: str, tmp_path: Path) -> Gateway:
    """A gateway on the test's own database with these PACS targets (no grace: a job of a
    removed target fails at the worker's first idle look)."""

    @asynccontextmanager
    async def _run(
        targets: list[PacsTarget], retry: float = 0.2, grace: float = 0
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=fresh_database_url,
            chunk_size=CHUNK_SIZE,
            secret_key="removed-target-key-" + "r" * 32,
            pacs_targets=targets,
            forward_retry_delays=[retry],
            forward_poll_seconds=0.05,
            forward_removed_target_grace_seconds=grace,
            totp_required_roles=[],
            rate_limit_login_ip="100000/minute",
            scheduler=False,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                APPS[id(client)] = app
                try:
                    yield client
                finally:
                    del APPS[id(client)]

    return _run


APPS: dict[int, FastAPI] = {}  # each open client's gateway


def _app(client: httpx.AsyncClient) -> FastAPI:
    return APPS[id(client)]


async def _account(client: httpx.AsyncClient, role: Role) -> Account:
    username = unique_name(role.value[:5])
    async with app_state(_app(client)).db.sessionmaker() as session, session.begin():
        await create_user(session, username=username, password=PASSWORD, role=role)
    login = await client.post(
        f"{API}/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    return Account(username, role, login.json()["access_token"])


async def _login(client: httpx.AsyncClient, account: Account) -> Account:
    login = await client.post(
        f"{API}/auth/login", json={"username": account.username, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    return Account(account.username, account.role, login.json()["access_token"])


async def _wait(
    client: httpx.AsyncClient, account: Account, upload_id: str, until: Callable[[Any], bool]
) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            body: dict[str, Any] = (
                await client.get(f"{API}/uploads/{upload_id}", headers=account.headers)
            ).json()
            if until(body):
                return body
            await asyncio.sleep(0.05)


async def _jobs(client: httpx.AsyncClient, upload_id: str) -> list[ForwardJob]:
    async with app_state(_app(client)).db.sessionmaker() as session:
        rows = await session.scalars(
            select(ForwardJob)
            .where(ForwardJob.upload_id == uuid.UUID(upload_id))
            .order_by(ForwardJob.created_at)
        )
        return list(rows)


async def _timeline(client: httpx.AsyncClient, account: Account, upload_id: str) -> list[Any]:
    response = await client.get(f"{API}/uploads/{upload_id}/timeline", headers=account.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["steps"])


async def test_a_job_of_a_removed_target_fails_and_a_retry_sends_it_to_the_current_target(
    gateway: Gateway, orthanc: OrthancServer
) -> None:
    old, new = unique_name("old"), unique_name("new")
    study = make_study(2)
    # First the study is queued for a target that never answers (nothing listens there).
    async with gateway([PacsTarget(name=old, url=f"http://127.0.0.1:{free_port()}/dicom-web")]) as (
        client
    ):
        uploader = await _account(client, Role.CLINICIAN)
        admin = await _account(client, Role.ADMIN)
        done = await upload_study(client, uploader, study)
        assert done.status_code in (200, 202), done.text
        upload_id = done.json()["id"]
        await _wait(client, uploader, upload_id, lambda b: b["status"] in ("queued", "forwarding"))

    # The old target is removed, a new one configured (a real Orthanc).
    current = PacsTarget(
        name=new, url=orthanc.dicomweb_url, username=orthanc.auth[0], password=orthanc.auth[1]
    )
    # Within the grace (a replica that still knows the old target may claim it): left alone.
    async with gateway([current], grace=3600) as client:
        forwarder = app_state(_app(client)).forwarder
        assert forwarder is not None
        assert await forwarder.fail_one_removed_target() is False
        (job,) = await _jobs(client, upload_id)
        assert (job.status, job.target) == (JobStatus.QUEUED, old)
    async with gateway([current]) as client:
        uploader, admin = await _login(client, uploader), await _login(client, admin)
        failed = await _wait(client, uploader, upload_id, lambda b: b["status"] == "failed")
        assert failed["status"] == "failed"
        (job,) = await _jobs(client, upload_id)
        assert job.status == JobStatus.DONE
        assert job.target == old
        assert job.last_error is not None
        assert job.last_error.startswith("target_removed")
        steps = await _timeline(client, uploader, upload_id)
        (failure,) = [s for s in steps if s["step"] == "failed"]
        assert old in failure["detail"]
        assert "removed" in failure["detail"]
        notices = await client.get(f"{API}/notifications", headers=uploader.headers)
        assert "upload_failed" in [n["kind"] for n in notices.json()["items"]]
        async with app_state(_app(client)).db.sessionmaker() as session:
            (event,) = (
                await session.scalars(
                    select(AuditEvent).where(
                        AuditEvent.action == "forward.failed",
                        AuditEvent.object_id == upload_id,
                    )
                )
            ).all()
        assert event.details["reason"] == "target_removed"
        problems = await client.get(
            f"{API}/admin/uploads", params={"problem": "failed"}, headers=admin.headers
        )
        assert upload_id in [u["id"] for u in problems.json()["items"]]

        # The administrator's retry: the study goes to the current target, every instance.
        retried = await client.post(f"{API}/admin/uploads/{upload_id}/retry", headers=admin.headers)
        assert retried.status_code == 200, retried.text
        await _wait(client, uploader, upload_id, lambda b: b["status"] == "delivered")
        (job,) = await _jobs(client, upload_id)
        assert job.target == new
        study_uid = read_uid(study.files[0], "StudyInstanceUID")
        assert orthanc.sop_instance_uids(study_uid) == {
            read_uid(f, "SOPInstanceUID") for f in study.files
        }

        # A report write-back queued for a target since removed fails too; the study stays
        # delivered.
        gone = unique_name("gone")
        async with app_state(_app(client)).db.sessionmaker() as session, session.begin():
            await enqueue_report(session, upload_id=uuid.UUID(upload_id), target=gone)

        async def report_job() -> ForwardJob:
            async with asyncio.timeout(60):
                while True:
                    jobs = [j for j in await _jobs(client, upload_id) if j.kind == JobKind.REPORT]
                    if jobs and jobs[0].status == JobStatus.DONE:
                        return jobs[0]
                    await asyncio.sleep(0.05)

        report = await report_job()
        assert report.last_error is not None
        assert report.last_error.startswith("target_removed")
        view = await client.get(f"{API}/uploads/{upload_id}", headers=uploader.headers)
        assert view.json()["status"] == "delivered"
        steps = await _timeline(client, uploader, upload_id)
        (write_back,) = [s for s in steps if s["step"] == "report_write_back_failed"]
        assert gone in write_back["detail"]
