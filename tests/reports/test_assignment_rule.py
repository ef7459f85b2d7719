"""The automatic assignment rule set by an administrator (GET/PUT /admin/assignment-rule): it
wins over RELAYPACS_REPORT_AUTO_ASSIGN, turns round robin among the readers of the modality or
among all active radiologists, or is off; every change is audited. On each database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.models import Role
from relaypacs.reports.models import AssignmentRule
from relaypacs.state import app_state
from tests.api.conftest import Account, MakeAccount
from tests.api.uploading import error_code
from tests.reports.reporting import API, assign, deliver, user_id


@pytest.fixture
async def no_stored_rule(app: FastAPI) -> AsyncIterator[None]:
    """The rule is the gateway's, one row: the other report tests expect none (the
    configuration decides), so none is left behind."""

    async def clear() -> None:
        async with app_state(app).db.sessionmaker() as session, session.begin():
            await session.execute(delete(AssignmentRule))

    await clear()
    yield
    await clear()


async def put_rule(
    client: httpx.AsyncClient, account: Account, *, enabled: bool, by_modality: bool
) -> httpx.Response:
    return await client.put(
        f"{API}/admin/assignment-rule",
        json={"enabled": enabled, "by_modality": by_modality},
        headers=account.headers,
    )


async def report_of(client: httpx.AsyncClient, admin: Account, report_id: str) -> dict[str, str]:
    response = await client.get(f"{API}/reports/{report_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


@pytest.mark.usefixtures("no_stored_rule")
class TestAssignmentRuleSetting:
    async def test_the_configuration_decides_until_an_administrator_sets_it(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        uploader = await make_account(Role.CLINICIAN)
        await make_account(Role.RADIOLOGIST)
        shown = await client.get(f"{API}/admin/assignment-rule", headers=admin.headers)
        assert shown.status_code == 200, shown.text
        rule = shown.json()
        # RELAYPACS_REPORT_AUTO_ASSIGN is off in these tests.
        assert (rule["enabled"], rule["source"], rule["updated_by"]) == (
            False,
            "configuration",
            None,
        )
        assert rule["active_radiologists"] >= 1

        # The administrator turns it on: a report that opens is assigned at once, although
        # the configuration (auto_assign=False here) says no.
        changed = await put_rule(client, admin, enabled=True, by_modality=True)
        assert changed.status_code == 200, changed.text
        assert changed.json()["source"] == "administrator"
        assert changed.json()["enabled"] is True
        assert changed.json()["updated_by"] == admin.username
        _, report_id = await deliver(app, client, uploader, auto_assign=False)
        assert (await report_of(client, admin, report_id))["status"] == "assigned"

        # Off: a report waits for assignment by hand, although the configuration says yes.
        off = await put_rule(client, admin, enabled=False, by_modality=True)
        assert off.json()["enabled"] is False
        _, report_id = await deliver(app, client, uploader, auto_assign=True)
        report = await report_of(client, admin, report_id)
        assert report["status"] == "pending"
        assert report["radiologist_id"] is None

        # Both changes are in the audit log, with who made them and the rule before.
        admin_id = uuid.UUID(await user_id(client, admin))
        async with app_state(app).db.read_sessionmaker() as session, session.begin():
            events = list(
                await session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.action == "assignment.rule")
                    .where(AuditEvent.actor_id == admin_id)
                    .order_by(AuditEvent.id)
                )
            )
        assert [(e.details["enabled"], e.details["before"]["enabled"]) for e in events] == [
            (True, False),
            (False, True),
        ]

    async def test_by_modality_or_among_every_active_radiologist(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        uploader = await make_account(Role.CLINICIAN)
        modality = "Y" + uuid.uuid4().hex[:6].upper()  # no other test's radiologist reads it
        reader = await make_account(Role.RADIOLOGIST)
        await make_account(Role.RADIOLOGIST)  # another one, never assigned anything
        reader_id = await user_id(client, reader)
        response = await client.put(
            f"{API}/admin/radiologists/{reader_id}/modalities",
            json={"modalities": [modality]},
            headers=admin.headers,
        )
        assert response.status_code == 200, response.text
        # The reader was assigned a report just now: the most recently assigned of all.
        _, by_hand = await deliver(app, client, uploader)
        assert (await assign(client, admin, by_hand, reader)).status_code == 200

        # By modality: the only reader of the modality gets it anyway.
        assert (await put_rule(client, admin, enabled=True, by_modality=True)).status_code == 200
        _, report_id = await deliver(app, client, uploader, metadata={"modality": modality})
        assert (await report_of(client, admin, report_id))["radiologist_id"] == reader_id

        # Among every active radiologist: the one assigned least recently, not the reader.
        assert (await put_rule(client, admin, enabled=True, by_modality=False)).status_code == 200
        _, report_id = await deliver(app, client, uploader, metadata={"modality": modality})
        report = await report_of(client, admin, report_id)
        assert report["status"] == "assigned"
        assert report["radiologist_id"] not in (None, reader_id)

    async def test_only_administrators_and_a_well_formed_rule(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        for role in (Role.CLINICIAN, Role.RADIOLOGIST):
            account = await make_account(role)
            refused = await put_rule(client, account, enabled=True, by_modality=False)
            assert refused.status_code == 403
            assert error_code(refused) == "forbidden"
            shown = await client.get(f"{API}/admin/assignment-rule", headers=account.headers)
            assert shown.status_code == 403
        for body in ({"enabled": "maybe", "by_modality": True}, {"enabled": True}, {}):
            bad = await client.put(f"{API}/admin/assignment-rule", json=body, headers=admin.headers)
            assert bad.status_code == 422, bad.text
            assert error_code(bad) == "invalid_request"
        # Nothing was stored by the refused attempts.
        shown = await client.get(f"{API}/admin/assignment-rule", headers=admin.headers)
        assert shown.json()["source"] == "configuration"
