"""Stored notifications through the API: written with what they tell of, listed with the
unread count, marked read one by one or all; another user's is a 404."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from relaypacs.auth.models import Role
from tests.api.conftest import Account, MakeAccount
from tests.api.uploading import error_code
from tests.reports.reporting import API, assign, deliver, sign


async def _notices(client: httpx.AsyncClient, account: Account, **params: str) -> dict[str, Any]:
    response = await client.get(f"{API}/notifications", params=params, headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestReportNotices:
    async def test_assigned_ready_amended_reach_the_right_users(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        uploader = await make_account(Role.CLINICIAN)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        upload_id, report_id = await deliver(app, client, uploader)
        await assign(client, admin, report_id, radiologist)
        assigned = await _notices(client, radiologist)
        assert [(n["kind"], n["related_id"]) for n in assigned["items"]] == [
            ("report_assigned", report_id)
        ]
        assert assigned["unread"] == 1
        assert (await sign(client, radiologist, report_id)).status_code == 200
        amend = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={"findings": "f2", "impression": "i2", "reason": "typo"},
            headers=radiologist.headers,
        )
        assert amend.status_code == 200
        mine = await _notices(client, uploader)
        items = mine["items"]
        assert isinstance(items, list)
        assert [n["kind"] for n in items] == [  # newest first
            "report_amended",
            "report_ready",
            "upload_validated",
            "upload_received",
        ]
        assert items[1]["payload"] == {"version": 1, "upload_id": upload_id}
        assert items[0]["payload"]["version"] == 2
        assert mine["unread"] == 4
        assert mine["total"] == 4


class TestMarkingRead:
    async def test_one_then_all(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        uploader = await make_account(Role.CLINICIAN)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        for _ in range(3):
            _, report_id = await deliver(app, client, uploader)
            await assign(client, admin, report_id, radiologist)
        listed = await _notices(client, radiologist)
        items = listed["items"]
        assert isinstance(items, list)
        assert listed["unread"] == 3
        first = items[0]["id"]
        read = await client.post(f"{API}/notifications/{first}/read", headers=radiologist.headers)
        assert read.status_code == 200, read.text
        assert read.json()["is_read"] is True
        again = await client.post(f"{API}/notifications/{first}/read", headers=radiologist.headers)
        assert again.status_code == 200  # idempotent
        after = await _notices(client, radiologist)
        assert after["unread"] == 2
        unread = await _notices(client, radiologist, unread_only="true")
        assert unread["total"] == 2
        assert first not in [n["id"] for n in unread["items"]]
        everything = await client.post(f"{API}/notifications/read-all", headers=radiologist.headers)
        assert everything.json() == {"marked": 2}
        assert (await _notices(client, radiologist))["unread"] == 0

    async def test_another_users_notification_is_a_404_and_stays_unread(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        uploader = await make_account(Role.CLINICIAN)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        _, report_id = await deliver(app, client, uploader)
        await assign(client, admin, report_id, radiologist)
        theirs = (await _notices(client, radiologist))["items"][0]["id"]
        for who in (uploader, admin):
            response = await client.post(f"{API}/notifications/{theirs}/read", headers=who.headers)
            assert response.status_code == 404
            assert error_code(response) == "notification_not_found"
            read_all = await client.post(f"{API}/notifications/read-all", headers=who.headers)
            assert read_all.status_code == 200
        missing = await client.post(
            f"{API}/notifications/{uuid.uuid4()}/read", headers=uploader.headers
        )
        assert missing.json()["error"]["code"] == "notification_not_found"
        assert (await _notices(client, radiologist))["unread"] == 1
        # The uploader has only their own (their upload's steps), none of the radiologist's.
        own = (await _notices(client, uploader))["items"]
        assert [n["kind"] for n in own] == ["upload_validated", "upload_received"]

    async def test_bad_input(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        user = await make_account(Role.CLINICIAN)
        bad_id = await client.post(f"{API}/notifications/nope/read", headers=user.headers)
        assert bad_id.status_code == 422
        for params in ({"limit": "0"}, {"limit": "201"}, {"offset": "-1"}, {"unread_only": "x"}):
            response = await client.get(f"{API}/notifications", params=params, headers=user.headers)
            assert response.status_code == 422, params
            assert error_code(response) == "invalid_request"
        anonymous = await client.get(f"{API}/notifications")
        assert anonymous.status_code == 401
