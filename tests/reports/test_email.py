"""The report-ready email, received by a real SMTP server (aiosmtpd): sent after the commit,
retried, with no patient data in the subject or the body."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

import httpx
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.state import app_state
from tests.api.conftest import PASSWORD, Account, MakeAccount
from tests.conftest import unique_name
from tests.reports.conftest import PUBLIC_URL, Mailbox
from tests.reports.reporting import API, assign, deliver, sign

PATIENT = "Zyxwort^Quendolyn"


async def _account_with_email(app: FastAPI, client: httpx.AsyncClient) -> tuple[Account, str]:
    username = unique_name("mailed")
    email = f"{username}@hospital.example"
    async with app_state(app).db.sessionmaker() as session, session.begin():
        await create_user(
            session, username=username, password=PASSWORD, role=Role.CLINICIAN, email=email
        )
    login = await client.post(
        f"{API}/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    return Account(username, Role.CLINICIAN, login.json()["access_token"]), email


async def _received(mailbox: Mailbox, address: str, count: int) -> list[EmailMessage]:
    async with asyncio.timeout(15):
        while len(mailbox.to(address)) < count:
            await asyncio.sleep(0.05)
    return mailbox.to(address)


def _text(message: EmailMessage) -> str:
    return "\n".join(
        part.get_content()
        for part in message.walk()
        if part.get_content_type() in ("text/plain", "text/html")
    )


class TestReportReadyEmail:
    async def test_the_uploader_is_emailed_a_link_and_no_patient_data(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        make_account: MakeAccount,
        smtp: tuple[Mailbox, int],
    ) -> None:
        mailbox, _ = smtp
        uploader, address = await _account_with_email(app, client)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        _, report_id = await deliver(
            app,
            client,
            uploader,
            metadata={"patient_name": PATIENT, "patient_id": "PID-987654", "modality": "CT"},
        )
        await assign(client, admin, report_id, radiologist)
        assert mailbox.to(address) == []  # nothing before the report is ready
        signed = await sign(client, radiologist, report_id)
        assert signed.status_code == 200
        (message,) = await _received(mailbox, address, 1)
        assert message["Subject"] == "RelayPACS: a report is ready"
        assert message["To"] == address
        body = _text(message)
        assert f"{PUBLIC_URL}/reports/{report_id}" in body
        for phi in ("Zyxwort", "Quendolyn", "PID-987654"):
            assert phi not in str(message["Subject"])
            assert phi not in message.as_string()
        assert {p.get_content_type() for p in message.walk()} >= {"text/plain", "text/html"}

        amended = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={"findings": "f", "impression": "i", "reason": "r"},
            headers=radiologist.headers,
        )
        assert amended.status_code == 200
        messages = await _received(mailbox, address, 2)
        assert messages[1]["Subject"] == "RelayPACS: a report was amended"

    async def test_a_temporary_smtp_failure_is_retried(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        make_account: MakeAccount,
        smtp: tuple[Mailbox, int],
    ) -> None:
        mailbox, _ = smtp
        uploader, address = await _account_with_email(app, client)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        _, report_id = await deliver(app, client, uploader)
        await assign(client, admin, report_id, radiologist)
        refused_before = mailbox.refused
        with mailbox.lock:
            mailbox.refuse_next = 1
        signed = await sign(client, radiologist, report_id)
        assert signed.status_code == 200  # the request did not wait for the mail
        (message,) = await _received(mailbox, address, 1)
        assert mailbox.refused == refused_before + 1
        assert message["Subject"] == "RelayPACS: a report is ready"

    async def test_no_email_for_a_report_that_was_not_signed(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        make_account: MakeAccount,
        smtp: tuple[Mailbox, int],
    ) -> None:
        mailbox, _ = smtp
        uploader, address = await _account_with_email(app, client)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        _, report_id = await deliver(app, client, uploader)
        await assign(client, admin, report_id, radiologist)
        empty = await sign(client, radiologist, report_id, findings=" ")
        assert empty.status_code == 422  # rolled back: nothing to tell
        await asyncio.sleep(1.0)
        assert mailbox.to(address) == []


class TestPreferences:
    async def test_a_kind_turned_off_is_not_emailed_the_others_are(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        make_account: MakeAccount,
        smtp: tuple[Mailbox, int],
    ) -> None:
        mailbox, _ = smtp
        uploader, address = await _account_with_email(app, client)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        defaults = await client.get(f"{API}/notifications/preferences", headers=uploader.headers)
        assert defaults.json() == {
            "email": {
                "report_ready": True,
                "report_amended": True,
                "upload_failed": True,
                "upload_rejected": True,
                "upload_expired": True,
            }
        }
        changed = await client.put(
            f"{API}/notifications/preferences",
            json={"email": {"report_ready": False}},
            headers=uploader.headers,
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["email"]["report_ready"] is False
        assert changed.json()["email"]["report_amended"] is True
        for bad in ({"email": {"upload_received": True}}, {"email": {"report_ready": "no"}}, {}):
            refused = await client.put(
                f"{API}/notifications/preferences", json=bad, headers=uploader.headers
            )
            assert refused.status_code == 422, bad

        _, report_id = await deliver(app, client, uploader)
        await assign(client, admin, report_id, radiologist)
        assert (await sign(client, radiologist, report_id)).status_code == 200
        amended = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={"findings": "f", "impression": "i", "reason": "r"},
            headers=radiologist.headers,
        )
        assert amended.status_code == 200
        (message,) = await _received(mailbox, address, 1)
        assert message["Subject"] == "RelayPACS: a report was amended"  # not the ready one
        await asyncio.sleep(0.5)
        assert len(mailbox.to(address)) == 1
        # The notices themselves are all there.
        listed = await client.get(f"{API}/notifications", headers=uploader.headers)
        assert [n["kind"] for n in listed.json()["items"]] == [
            "report_amended",
            "report_ready",
            "upload_validated",
            "upload_received",
        ]
