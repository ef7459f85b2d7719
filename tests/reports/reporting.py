"""Helpers of the report tests: a study uploaded and delivered (its report opened as the
forwarder's settle hook opens it), and the report endpoints."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from relaypacs.reports import repository
from relaypacs.reports.service import open_report
from relaypacs.state import app_state
from tests.api.conftest import Account
from tests.api.uploading import Study, make_study, upload_study

API = "/api/v1"


async def deliver(
    app: FastAPI,
    client: httpx.AsyncClient,
    uploader: Account,
    *,
    study: Study | None = None,
    metadata: dict[str, Any] | None = None,
    auto_assign: bool = False,
) -> tuple[str, str]:
    """Upload a study; its delivery opens the report (the forwarder's settle hook, run here
    without a PACS). Returns (upload id, report id)."""
    study = study or make_study(2)
    if metadata is not None:
        base = study.manifest

        def manifest() -> dict[str, Any]:
            return base() | {"metadata": metadata}

        study.manifest = manifest  # type: ignore[method-assign]
    done = await upload_study(client, uploader, study)
    assert done.status_code in (200, 202), done.text
    upload_id = uuid.UUID(done.json()["id"])
    async with app_state(app).db.sessionmaker() as session, session.begin():
        await open_report(session, upload_id=upload_id, auto_assign=auto_assign)
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        report = await repository.report_of_upload(session, upload_id)
        assert report is not None
        return str(upload_id), str(report.id)


async def user_id(client: httpx.AsyncClient, account: Account) -> str:
    response = await client.get(f"{API}/auth/me", headers=account.headers)
    assert response.status_code == 200, response.text
    value: str = response.json()["id"]
    return value


async def assign(
    client: httpx.AsyncClient, admin: Account, report_id: str, radiologist: Account
) -> httpx.Response:
    return await client.post(
        f"{API}/admin/reports/{report_id}/assign",
        json={"radiologist_id": await user_id(client, radiologist)},
        headers=admin.headers,
    )


async def sign(
    client: httpx.AsyncClient,
    radiologist: Account,
    report_id: str,
    findings: str = "No acute abnormality.",
    impression: str = "Normal study.",
) -> httpx.Response:
    return await client.post(
        f"{API}/reports/{report_id}/sign",
        json={"findings": findings, "impression": impression},
        headers=radiologist.headers,
    )
