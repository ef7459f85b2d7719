"""Forwarding against a fault-injecting PACS: the retry policy, permanent failures, the breaker."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.main import create_app
from relaypacs.notifications.models import Notification
from relaypacs.reports.models import Report
from relaypacs.state import app_settings, app_state
from tests.api.conftest import CHUNK_SIZE, PASSWORD, Account
from tests.api.uploading import API, Study, make_study, read_uid, upload_study
from tests.conftest import unique_name
from tests.pacs import FaultPacs, failed, ok, slow, status
from tests.servers import free_port

PACS_USER, PACS_PASSWORD = "gateway", "pacs-secret-password"
TERMINAL = {"delivered", "failed", "cancelled"}


@pytest.fixture
def pacs() -> Iterator[FaultPacs]:
    with FaultPacs(auth=(PACS_USER, PACS_PASSWORD)) as server:
        yield server


def gateway_settings(data_dir: Path, pacs: FaultPacs, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "chunk_size": CHUNK_SIZE,
        "secret_key": "forwarding-test-key-" + "z" * 32,
        "pacs_url": pacs.dicomweb_url,
        "pacs_username": PACS_USER,
        "pacs_password": PACS_PASSWORD,
        "forward_retry_delays": [0.2, 0.4, 0.8],
        "forward_retry_interval": 1.0,
        "forward_poll_seconds": 0.05,
        "breaker_reset_seconds": 1.5,
        "totp_required_roles": [],  # the administrators here sign in with a password only
        "rate_limit_login_ip": "100000/minute",  # many logins from the in-process address
    }
    options.update(overrides)
    return Settings(**options)


class Gateway:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, account: Account) -> None:
        self.app, self.client, self.account = app, client, account

    async def upload(self, study: Study) -> str:
        response = await upload_study(self.client, self.account, study)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "queued"
        upload_id: str = response.json()["id"]
        return upload_id

    async def get(self, upload_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{API}/uploads/{upload_id}", headers=self.account.headers)
        body: dict[str, Any] = response.json()
        return body

    async def wait(self, upload_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = await self.get(upload_id)
            if body["status"] in TERMINAL:
                return body
            await asyncio.sleep(0.05)
        raise AssertionError(f"upload still {body['status']}: {body['forwarding']}")


async def start_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            username = unique_name("fwd")
            async with app_state(app).db.sessionmaker() as session, session.begin():
                await create_user(
                    session, username=username, password=PASSWORD, role=Role.CLINICIAN
                )
            login = await client.post(
                f"{API}/auth/login", json={"username": username, "password": PASSWORD}
            )
            yield Gateway(
                app, client, Account(username, Role.CLINICIAN, login.json()["access_token"])
            )


@pytest.fixture
async def gateway(tmp_path: Path, pacs: FaultPacs) -> AsyncIterator[Gateway]:
    async for gw in start_gateway(gateway_settings(tmp_path / "data", pacs)):
        yield gw


def sops(study: Study) -> list[str]:
    return [read_uid(f, "SOPInstanceUID") for f in study.files]


class TestDelivery:
    async def test_delivered_only_after_qido_lists_every_instance(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        study = make_study(23)
        upload_id = await gateway.upload(study)
        body = await gateway.wait(upload_id)
        assert body["status"] == "delivered"
        forwarding = body["forwarding"]
        assert (forwarding["confirmed"], forwarding["instances"], forwarding["failed"]) == (
            23,
            23,
            0,
        )
        assert forwarding["target"] == "pacs"
        assert {f["forward_status"] for f in body["files"]} == {"confirmed"}
        assert set(pacs.sop_instance_uids(study.uid)) == set(sops(study))
        # batches of 10 instances; every instance sent once; credentials were checked
        assert [len(r.parts) for r in pacs.stow_requests()] == [10, 10, 3]
        assert all(r.authorized for r in pacs.requests)
        # verified with QIDO-RS: 24 asked for (one more than expected) in 3 pages at once,
        # the last one short, so no further page
        qido = [r for r in pacs.qido_requests() if r.path.endswith("/instances")]
        assert sorted((int(r.query["offset"][0]), int(r.query["limit"][0])) for r in qido) == [
            (0, 8),
            (8, 8),
            (16, 8),
        ]
        async with app_state(gateway.app).db.read_sessionmaker() as session, session.begin():
            uid = uuid.UUID(upload_id)
            report = await session.scalar(select(Report).where(Report.upload_id == uid))
            notice = await session.scalar(
                select(Notification).where(
                    Notification.related_id == uid, Notification.type == "upload_delivered"
                )
            )
            audit = await session.scalar(
                select(AuditEvent).where(
                    AuditEvent.object_id == upload_id, AuditEvent.action == "forward.delivered"
                )
            )
        assert report is not None
        assert report.status == "pending"
        assert notice is not None
        assert notice.payload["confirmed"] == 23
        assert audit is not None
        assert audit.details["confirmed"] == 23

    async def test_a_pacs_capping_qido_pages_still_lists_everything(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        # Fewer items per page than asked for: the pages asked for at once leave gaps, which
        # must not look like missing instances (they would be sent again, forever).
        pacs.qido_page_cap = 5
        study = make_study(23)
        upload_id = await gateway.upload(study)
        body = await gateway.wait(upload_id)
        assert body["status"] == "delivered"
        assert body["forwarding"]["confirmed"] == 23
        assert len(pacs.stow_requests()) == 3, "no instance was sent twice"
        offsets = [
            int(r.query["offset"][0]) for r in pacs.qido_requests() if r.path.endswith("/instances")
        ]
        assert offsets[-6:] == [0, 5, 10, 15, 20, 23]

    async def test_stored_but_not_listed_by_qido_is_sent_again(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        study = make_study(3)
        hidden = sops(study)[1]
        pacs.script_qido(ok(hidden=[hidden]))
        upload_id = await gateway.upload(study)
        body = await gateway.wait(upload_id)
        # the first QIDO did not list it: sent again, then listed (the default answer)
        assert body["status"] == "delivered"
        stows = pacs.stow_requests()
        assert [r.sop_instance_uids for r in stows[1:]] == [[hidden]]


class TestRetryPolicy:
    async def test_503_is_retried_after_1_2_4_times_the_base_delay(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        pacs.script_stow(status(503), status(503), status(503))
        upload_id = await gateway.upload(make_study(2))
        body = await gateway.wait(upload_id)
        assert body["status"] == "delivered"
        times = [r.at for r in pacs.stow_requests()]
        assert len(times) == 4
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for gap, base in zip(gaps, [0.2, 0.4, 0.8], strict=True):
            assert base * 0.8 <= gap <= base * 1.2 + 0.5, gaps

    @pytest.mark.parametrize("code", [400, 409, 415])
    async def test_client_errors_are_permanent_and_never_retried(
        self, gateway: Gateway, pacs: FaultPacs, code: int
    ) -> None:
        pacs.script_stow(status(code))
        upload_id = await gateway.upload(make_study(1))
        body = await gateway.wait(upload_id)
        assert body["status"] == "failed"
        assert body["files"][0]["forward_status"] == "failed"
        assert body["files"][0]["forward_error"] == f"http_{code}"
        await asyncio.sleep(0.5)
        assert len(pacs.stow_requests()) == 1

    async def test_failures_in_a_200_answer_are_read_and_only_those_are_resent(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        # Orthanc 1.10 answers 200 even when instances failed.
        study = make_study(4)
        uids = sops(study)
        pacs.script_stow(failed(reasons={uids[1]: 0xA700, uids[2]: 0xA900}, http_status=200))
        upload_id = await gateway.upload(study)
        body = await gateway.wait(upload_id)
        # A700 (out of resources) was retried alone; A900 is permanent
        assert [r.sop_instance_uids for r in pacs.stow_requests()] == [uids, [uids[1]]]
        assert body["status"] == "failed"
        by_index = {f["index"]: f for f in body["files"]}
        assert by_index[2]["forward_status"] == "failed"
        assert by_index[2]["forward_error"] == "A900"
        assert {by_index[i]["forward_status"] for i in (0, 1, 3)} == {"confirmed"}
        assert body["forwarding"]["confirmed"] == 3

    async def test_timeouts_are_retried_and_the_api_keeps_answering(
        self, tmp_path: Path, pacs: FaultPacs
    ) -> None:
        settings = gateway_settings(tmp_path / "data", pacs)
        settings.pacs_targets[0].read_timeout = 1.0
        pacs.script_stow(slow(5.0))
        async for gw in start_gateway(settings):
            upload_id = await gw.upload(make_study(2))
            await pacs.async_wait_for(1)
            started = time.monotonic()
            health = await gw.client.get(f"{API}/health")
            assert health.status_code == 200
            assert time.monotonic() - started < 0.5
            body = await gw.wait(upload_id)
            assert body["status"] == "delivered"
            assert len(pacs.stow_requests()) == 2


class TestAdministration:
    async def test_admin_lists_failed_uploads_and_retries_only_the_failed_instances(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        study = make_study(3)
        uids = sops(study)
        pacs.script_stow(failed(reasons={uids[0]: 0xC000}, http_status=200))
        upload_id = await gateway.upload(study)
        assert (await gateway.wait(upload_id))["status"] == "failed"
        async with app_state(gateway.app).db.sessionmaker() as session, session.begin():
            await create_user(
                session, username="admin-" + upload_id[:8], password=PASSWORD, role=Role.ADMIN
            )
        login = await gateway.client.post(
            f"{API}/auth/login", json={"username": "admin-" + upload_id[:8], "password": PASSWORD}
        )
        admin = {"Authorization": f"Bearer {login.json()['access_token']}"}
        listing = await gateway.client.get(f"{API}/admin/uploads?status=failed", headers=admin)
        assert upload_id in [u["id"] for u in listing.json()["items"]]
        clinician_try = await gateway.client.get(
            f"{API}/admin/uploads?status=failed", headers=gateway.account.headers
        )
        assert clinician_try.status_code == 403
        retry = await gateway.client.post(f"{API}/admin/uploads/{upload_id}/retry", headers=admin)
        assert retry.status_code == 200
        assert retry.json()["status"] == "queued"
        body = await gateway.wait(upload_id)
        assert body["status"] == "delivered"
        assert [r.sop_instance_uids for r in pacs.stow_requests()] == [uids, [uids[0]]]
        # Each forwarding outcome and the retry are in the audit log, oldest first.
        audit = await gateway.client.get(
            f"{API}/admin/audit", params={"object_id": upload_id}, headers=admin
        )
        records = [
            (r["action"], r["outcome"], r["actor_role"], r["study_instance_uid"])
            for r in reversed(audit.json()["items"])
            if r["action"].startswith(("forward.", "admin."))
        ]
        assert records == [
            ("forward.failed", "failure", None, study.uid),
            ("admin.upload_retry", "success", "admin", study.uid),
            ("forward.delivered", "success", None, study.uid),
        ]


class TestCircuitBreaker:
    async def test_opens_after_5_failures_and_sends_nothing_until_it_half_opens(
        self, tmp_path: Path, pacs: FaultPacs
    ) -> None:
        settings = gateway_settings(
            tmp_path / "data", pacs, forward_retry_delays=[0.05], forward_retry_interval=0.05
        )
        pacs.script_stow(*[status(503)] * 6)
        async for gw in start_gateway(settings):
            upload_id = await gw.upload(make_study(1))
            body = await gw.wait(upload_id)
            assert body["status"] == "delivered"
            times = [r.at for r in pacs.stow_requests()]
            assert len(times) == 7
            # five quick failures, then the breaker holds everything for 1.5 s; the half-open
            # probe fails (6th 503) and it opens again; the next probe succeeds
            # (the quick retries come 0.05 s apart: each well under the breaker's 1.5 s, even
            # on a loaded machine)
            assert max(b - a for a, b in itertools.pairwise(times[:5])) < 1.5 * 0.95
            assert times[5] - times[4] >= 1.5 * 0.95
            assert times[6] - times[5] >= 1.5 * 0.95
            forwarder = app_state(gw.app).forwarder
            assert forwarder is not None
            assert forwarder.breaker("pacs").state == "closed"


class TestNoPacs:
    async def test_unreachable_pacs_is_reported_at_start_and_studies_stay_queued(
        self, tmp_path: Path, pacs: FaultPacs, caplog: pytest.LogCaptureFixture
    ) -> None:
        nowhere = f"http://127.0.0.1:{free_port()}/dicom-web"
        settings = gateway_settings(tmp_path / "data", pacs, pacs_url=nowhere)
        with caplog.at_level("WARNING", logger="relaypacs"):
            async for gw in start_gateway(settings):
                for _ in range(100):  # said beside the start, not before it
                    if "is not reachable" in caplog.text:
                        break
                    await asyncio.sleep(0.05)
                assert "is not reachable" in caplog.text
                upload_id = await gw.upload(make_study(1))
                await asyncio.sleep(2.0)
                body = await gw.get(upload_id)
                assert body["status"] in ("queued", "forwarding")
                assert body["forwarding"]["last_error"].startswith(("network", "timeout"))
                assert body["forwarding"]["attempts"] >= 1
        assert PACS_PASSWORD not in caplog.text

    async def test_a_hung_pacs_does_not_hold_the_start(
        self, tmp_path: Path, pacs: FaultPacs, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A PACS that takes connections and never answers: the gateway serves and takes
        uploads at once (it used to wait out the 60 s read timeout before serving), and says
        within seconds that the PACS does not answer."""
        hung = socket.socket()
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # connections complete in the backlog; nothing ever answers
        try:
            url = f"http://127.0.0.1:{hung.getsockname()[1]}/dicom-web"
            settings = gateway_settings(tmp_path / "data", pacs, pacs_url=url)
            with caplog.at_level("INFO", logger="relaypacs"):
                async for gw in start_gateway(settings):
                    # Serving while the probe still waits for its answer.
                    assert "PACS target 'pacs'" not in caplog.text
                    upload_id = await gw.upload(make_study(1))
                    assert (await gw.get(upload_id))["status"] in ("queued", "forwarding")
                    for _ in range(200):
                        if "is not reachable (ReadTimeout)" in caplog.text:
                            break
                        await asyncio.sleep(0.05)
                    assert "is not reachable (ReadTimeout)" in caplog.text
        finally:
            hung.close()

    async def test_admin_cancel_stops_forwarding_and_deletes_the_files(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        pacs.script_stow(*[status(503)] * 50)
        upload_id = await gateway.upload(make_study(2))
        while ((await gateway.get(upload_id))["forwarding"] or {}).get("attempts", 0) < 1:
            await asyncio.sleep(0.05)  # retrying: that makes it "stuck"
        async with app_state(gateway.app).db.sessionmaker() as session, session.begin():
            await create_user(
                session, username="cadmin-" + upload_id[:8], password=PASSWORD, role=Role.ADMIN
            )
        login = await gateway.client.post(
            f"{API}/auth/login", json={"username": "cadmin-" + upload_id[:8], "password": PASSWORD}
        )
        admin = {"Authorization": f"Bearer {login.json()['access_token']}"}
        stuck = await gateway.client.get(f"{API}/admin/uploads?status=stuck", headers=admin)
        assert upload_id in [u["id"] for u in stuck.json()["items"]]
        cancel = await gateway.client.post(f"{API}/admin/uploads/{upload_id}/cancel", headers=admin)
        assert cancel.status_code == 200
        assert cancel.json()["status"] == "cancelled"
        sent = len(pacs.stow_requests())
        await asyncio.sleep(2.0)
        assert len(pacs.stow_requests()) <= sent + 1  # at most the request already in flight
        assert (await gateway.get(upload_id))["status"] == "cancelled"
        keys = [k async for k in app_state(gateway.app).storage.list(f"uploads/{upload_id}/")]
        assert keys == []


class TestStatusView:
    async def test_without_files_the_view_has_the_same_progress(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        upload_id = await gateway.upload(make_study(5))
        full = await gateway.wait(upload_id)
        response = await gateway.client.get(
            f"{API}/uploads/{upload_id}", params={"files": "false"}, headers=gateway.account.headers
        )
        light = response.json()
        assert light["files"] is None
        assert light["forwarding"] == full["forwarding"]
        assert {k: v for k, v in light.items() if k != "files"} == {
            k: v for k, v in full.items() if k != "files"
        }


class TestQidoPaging:
    async def test_every_page_is_read_even_when_more_than_expected(
        self, gateway: Gateway, pacs: FaultPacs
    ) -> None:
        from relaypacs.pacs.dicomweb import DicomWebClient

        study = make_study(7)
        upload_id = await gateway.upload(study)
        assert (await gateway.wait(upload_id))["status"] == "delivered"
        target = app_settings(gateway.app).pacs_targets[0]
        client = DicomWebClient(target, app_state(gateway.app).storage)
        try:
            everything = set(sops(study))
            # pages of 2: 4 pages; asked for 2 up front, the rest page by page
            assert await client.instance_uids(study.uid, expected=3, page=2) == everything
            assert await client.instance_uids(study.uid, expected=7, page=2) == everything
            assert await client.instance_uids(study.uid, page=100) == everything
        finally:
            await client.aclose()
