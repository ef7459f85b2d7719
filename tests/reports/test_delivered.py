"""From upload to report against a real Orthanc and a real gateway process: the delivery opens
the report (the forwarder's settle hook) and the rule assigns it; the radiologist sees "PACS
confirmed N/N" and signs; the uploader's stream hears of each step."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.uploading import make_study
from tests.forwarding.test_orthanc import PASSWORD, Client, gateway
from tests.gateway import create_user
from tests.notifications.live import streaming
from tests.pacs import OrthancServer, run_orthanc

VIEWER = "http://viewer.example/stone-webviewer/index.html?study={study_instance_uid}"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


async def test_a_delivered_study_gets_its_report_assigned_signed_and_announced(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    gw = gateway(
        tmp_path,
        "gw",
        orthanc.dicomweb_url,
        orthanc,
        RELAYPACS_REPORT_AUTO_ASSIGN="true",
        RELAYPACS_PACS_VIEWER_URL=VIEWER,
        RELAYPACS_TOTP_REQUIRED_ROLES="[]",
        RELAYPACS_SSE_HEARTBEAT_SECONDS="1",
    )
    create_user(gw.data_dir, "clinician1", PASSWORD, env=gw.env)
    create_user(gw.data_dir, "radio1", PASSWORD, role="radiologist", env=gw.env)
    gw.start()
    try:
        clinician = Client(gw.base)
        radiologist = httpx.Client(base_url=gw.base, timeout=30)
        token = radiologist.post(
            "/auth/login", json={"username": "radio1", "password": PASSWORD}
        ).json()["access_token"]
        radiologist.headers["Authorization"] = f"Bearer {token}"
        base = gw.base.removesuffix("/api/v1")
        headers = {"Authorization": clinician.http.headers["Authorization"]}
        async with streaming(base, headers=headers) as told:
            study = make_study(3)
            upload_id = await asyncio.to_thread(clinician.upload, study)
            body = await asyncio.to_thread(clinician.wait, upload_id)
            assert body["status"] == "delivered", body["forwarding"]
            await told.wait_for(3)  # received, validated, delivered

            worklist = radiologist.get("/reports").json()
            assert worklist["total"] == 1
            report = worklist["items"][0]
            assert report["upload_id"] == upload_id
            assert report["status"] == "assigned"  # by the rule: the only radiologist
            view = radiologist.get(f"/reports/{report['id']}/study").json()
            assert view["pacs_confirmed"] == "PACS confirmed 3/3"
            assert view["viewer_url"] == VIEWER.replace("{study_instance_uid}", study.uid)
            signed = radiologist.post(
                f"/reports/{report['id']}/sign",
                json={"findings": "No fracture.", "impression": "Normal."},
            )
            assert signed.status_code == 200, signed.text
            await told.wait_for(4)
        kinds = [(e["data"]["kind"], e["data"]["related_id"]) for e in told.events]
        assert kinds == [
            ("upload_received", upload_id),
            ("upload_validated", upload_id),
            ("upload_delivered", upload_id),
            ("report_ready", report["id"]),
        ]
        mine = clinician.http.get(f"/reports/{report['id']}").json()
        assert mine["latest"]["impression"] == "Normal."
        timeline = clinician.http.get(f"/uploads/{upload_id}/timeline").json()
        steps = {s["step"]: s for s in timeline["steps"]}
        assert list(steps)[:4] == ["started", "received", "validated", "queued"]
        assert steps["pacs_confirmed"]["detail"] == "PACS confirmed 3/3"
        assert {"report_opened", "report_assigned", "report_ready"} <= set(steps)
        assert timeline["forwarding_retries"] == 0  # the first attempt delivered it
    finally:
        gw.stop()
