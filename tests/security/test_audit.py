"""The audit log: a record for every upload step, read and refusal; the admin query and export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

import relaypacs
from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.auth.models import Role
from relaypacs.devtools.synth import DEFAULT_PATIENT
from relaypacs.state import app_state
from tests.api.conftest import Account, MakeAccount
from tests.api.uploading import API, complete, content_md5, init, make_study, send_all

PATIENT = DEFAULT_PATIENT.name  # the patient name of tests/api/uploading.Study.manifest


async def audit(client: httpx.AsyncClient, admin: Account, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/admin/audit", params=params, headers=admin.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


class TestRecords:
    async def test_upload_steps_reads_and_refusals_are_recorded(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        owner, other = await make_account(), await make_account()
        radiologist, admin = await make_account(Role.RADIOLOGIST), await make_account(Role.ADMIN)
        study = make_study(2)
        upload_id = (await init(client, owner, study)).json()["id"]
        await send_all(client, owner, upload_id, study)
        assert (await complete(client, owner, upload_id)).status_code == 202
        assert (await client.get(f"{API}/uploads/{upload_id}", headers=owner.headers)).is_success
        polled = await client.get(f"{API}/uploads/{upload_id}?files=false", headers=owner.headers)
        assert polled.is_success  # the uploader's own status poll: not a record
        assert (await client.get(f"{API}/uploads", headers=owner.headers)).is_success
        refused = await client.get(f"{API}/uploads/{upload_id}", headers=other.headers)
        assert refused.status_code == 404
        chunk = await client.put(
            f"{API}/uploads/{upload_id}/files/0/chunks/0",
            content=b"x",
            headers={**other.headers, "Content-MD5": content_md5(b"x")},
        )
        assert chunk.status_code == 404
        by_role = await client.post(
            f"{API}/admin/uploads/{upload_id}/retry", headers=radiologist.headers
        )
        assert by_role.status_code == 403
        assert (await client.get(f"{API}/uploads/{upload_id}", headers=admin.headers)).is_success

        records = list(reversed(await audit(client, admin, object_id=upload_id)))
        owner_id, other_id, radiologist_id, admin_id = [
            (await client.get(f"{API}/auth/me", headers=a.headers)).json()["id"]
            for a in (owner, other, radiologist, admin)
        ]
        assert [(r["action"], r["outcome"], r["actor_id"], r["actor_role"]) for r in records] == [
            ("upload.start", "success", owner_id, "clinician"),
            ("upload.complete", "success", owner_id, "clinician"),
            ("upload.read", "success", owner_id, "clinician"),
            ("access.denied", "denied", other_id, "clinician"),
            ("access.denied", "denied", other_id, "clinician"),
            ("access.denied", "denied", radiologist_id, "radiologist"),
            ("upload.read", "success", admin_id, "admin"),
        ]
        object_denial, chunk_denial, role_denial = records[3], records[4], records[5]
        assert object_denial["study_instance_uid"] == study.uid
        assert object_denial["details"] == {
            "endpoint": "GET /api/v1/uploads/{upload_id}",
            "status": 404,
            "code": "upload_not_found",
            "reason": "not_owner",
        }
        assert chunk_denial["details"]["endpoint"].startswith("PUT ")
        assert role_denial["details"] == {
            "endpoint": "POST /api/v1/admin/uploads/{upload_id}/retry",
            "status": 403,
            "code": "forbidden",
            "reason": "role",
        }
        assert records[6]["details"] == {"files": True, "owner": False}
        for record in records:
            assert record["object_type"] == "upload"
            assert record["client_ip"] == "127.0.0.1"
            assert record["at"]
            assert PATIENT not in json.dumps(record)
        # The list of the uploader's studies is a read of them too.
        lists = await audit(client, admin, actor_id=owner_id, action="upload.list")
        assert [upload_id] == lists[0]["details"]["upload_ids"]

    async def test_a_missing_upload_is_recorded_like_another_users(
        self, client: httpx.AsyncClient, clinician: Account, make_account: MakeAccount
    ) -> None:
        """The same 404 and the same work (one record) either way: neither the answer nor its
        time tells another user's upload from one that does not exist."""
        admin = await make_account(Role.ADMIN)
        missing = str(uuid.uuid4())
        response = await client.get(f"{API}/uploads/{missing}", headers=clinician.headers)
        assert response.status_code == 404
        records = await audit(client, admin, object_id=missing)
        assert [(r["action"], r["outcome"], r["details"]["reason"]) for r in records] == [
            ("access.denied", "denied", "missing")
        ]

    async def test_a_denied_role_is_recorded_without_an_object(
        self, client: httpx.AsyncClient, clinician: Account, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        assert (
            await client.get(f"{API}/admin/audit", headers=clinician.headers)
        ).status_code == 403
        me = (await client.get(f"{API}/auth/me", headers=clinician.headers)).json()
        denied = await audit(client, admin, actor_id=me["id"], outcome="denied")
        assert len(denied) == 1
        assert denied[0]["details"]["endpoint"] == "GET /api/v1/admin/audit"
        assert denied[0]["object_id"] is None


class TestQuery:
    async def test_filters_pages_and_is_itself_audited(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        owner, admin = await make_account(), await make_account(Role.ADMIN)
        ids = [(await init(client, owner, make_study(1))).json()["id"] for _ in range(3)]
        me = (await client.get(f"{API}/auth/me", headers=owner.headers)).json()["id"]
        started = await audit(client, admin, actor_id=me, action="upload.start")
        assert [r["object_id"] for r in started] == ids[::-1]  # newest first

        first = await client.get(
            f"{API}/admin/audit",
            params={"actor_id": me, "action": "upload.start", "limit": 2},
            headers=admin.headers,
        )
        page = first.json()
        assert [r["object_id"] for r in page["items"]] == ids[:0:-1]
        rest = await audit(
            client, admin, actor_id=me, action="upload.start", limit=2, before=page["next_before"]
        )
        assert [r["object_id"] for r in rest] == ids[:1]

        at = dt.datetime.fromisoformat(started[1]["at"])
        since = await audit(client, admin, actor_id=me, since=at.isoformat())
        until = await audit(client, admin, actor_id=me, until=at.isoformat())
        assert {r["object_id"] for r in since} >= set(ids[1:])
        assert ids[0] in {r["object_id"] for r in until}
        assert ids[2] not in {r["object_id"] for r in until}
        uid_records = await audit(
            client, admin, study_instance_uid=started[0]["study_instance_uid"]
        )
        assert {r["object_id"] for r in uid_records} == {ids[2]}

        admin_id = (await client.get(f"{API}/auth/me", headers=admin.headers)).json()["id"]
        queries = await audit(client, admin, actor_id=admin_id, action="audit.query")
        assert len(queries) >= 7
        assert queries[1]["details"]["study_instance_uid"] == started[0]["study_instance_uid"]

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": 501},
            {"limit": 0},
            {"since": "2026-01-01T00:00:00"},  # no zone: ambiguous
            {"actor_id": "alice"},
            {"user": "x"},  # unknown filter
            {"before": -1},
        ],
    )
    async def test_bad_filters_are_422(
        self, client: httpx.AsyncClient, make_account: MakeAccount, params: dict[str, Any]
    ) -> None:
        admin = await make_account(Role.ADMIN)
        response = await client.get(f"{API}/admin/audit", params=params, headers=admin.headers)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_request"


class TestExport:
    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    async def test_streams_the_filtered_records_as_an_attachment(
        self, client: httpx.AsyncClient, make_account: MakeAccount, fmt: str
    ) -> None:
        owner, admin = await make_account(), await make_account(Role.ADMIN)
        ids = [(await init(client, owner, make_study(1))).json()["id"] for _ in range(3)]
        me = (await client.get(f"{API}/auth/me", headers=owner.headers)).json()["id"]
        async with client.stream(
            "GET",
            f"{API}/admin/audit/export",
            params={"format": fmt, "actor_id": me, "action": "upload.start"},
            headers=admin.headers,
        ) as response:
            assert response.status_code == 200
            body = (await response.aread()).decode()
        disposition = response.headers["content-disposition"]
        assert disposition.startswith("attachment; filename=")
        assert disposition.endswith(f'.{fmt}"')
        assert response.headers["cache-control"] == "no-store"
        if fmt == "csv":
            assert response.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(body)))
        else:
            assert response.headers["content-type"].startswith("application/x-ndjson")
            rows = [json.loads(line) for line in body.splitlines()]
        assert [r["object_id"] for r in rows] == ids  # oldest first
        assert {r["action"] for r in rows} == {"upload.start"}
        assert PATIENT not in body
        admin_id = (await client.get(f"{API}/auth/me", headers=admin.headers)).json()["id"]
        exports = await audit(client, admin, actor_id=admin_id, action="audit.export")
        assert exports[0]["details"] == {"actor_id": me, "action": "upload.start", "format": fmt}

    async def test_a_large_export_is_read_in_batches(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        async with client.stream(
            "GET", f"{API}/admin/audit/export", params={"format": "jsonl"}, headers=admin.headers
        ) as response:
            lines = [line async for line in response.aiter_lines() if line]
        ids = [json.loads(line)["id"] for line in lines]
        assert ids == sorted(ids)
        assert len(ids) == len(set(ids)) > 0

    async def test_only_for_administrators(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        for role in (Role.CLINICIAN, Role.RADIOLOGIST):
            account = await make_account(role)
            response = await client.get(f"{API}/admin/audit/export", headers=account.headers)
            assert response.status_code == 403
        assert (await client.get(f"{API}/admin/audit/export")).status_code == 401


class TestMassAssignment:
    @pytest.mark.parametrize(
        "extra",
        [
            {"user_id": str(uuid.uuid4())},
            {"owner": "admin"},
            {"status": "delivered"},
            {"role": "admin"},
            {"id": str(uuid.uuid4())},
            {"chunk_size": 1},
            {"study_hash": "0" * 64},
        ],
    )
    async def test_upload_init_refuses_fields_a_client_may_not_set(
        self, client: httpx.AsyncClient, clinician: Account, extra: dict[str, Any]
    ) -> None:
        study = make_study(1)
        manifest = {**study.manifest(), **extra}
        response = await client.post(f"{API}/uploads", json=manifest, headers=clinician.headers)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_request"
        assert next(iter(extra)) in response.text
        nested = study.manifest()
        nested["metadata"].update(extra)
        response = await client.post(f"{API}/uploads", json=nested, headers=clinician.headers)
        assert response.status_code == 422
        listing = await client.get(f"{API}/uploads", headers=clinician.headers)
        assert study.uid not in listing.text  # nothing was created

    async def test_login_cannot_carry_a_role(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            f"{API}/auth/login", json={"username": "a", "password": "b", "role": "admin"}
        )
        assert response.status_code == 422


class TestAppendOnly:
    async def test_the_database_refuses_to_change_or_remove_a_record(self, app: FastAPI) -> None:
        async with app_state(app).db.sessionmaker() as session, session.begin():
            await record_event(session, actor=SYSTEM, action="access.denied", outcome="denied")
        for statement in (
            "UPDATE audit_event SET outcome = 'success' WHERE outcome = 'denied'",
            "DELETE FROM audit_event WHERE action = 'access.denied'",
        ):
            async with app_state(app).db.sessionmaker() as session:
                # SQLite: the triggers; PostgreSQL: the gateway's role may not even try (the
                # owner meets the triggers: tests/security/test_audit_tamper.py).
                with pytest.raises(Exception, match=r"append-only|permission denied"):
                    async with session.begin():
                        await session.execute(text(statement))

    def test_the_application_never_writes_to_it_but_through_record_event(self) -> None:
        package = Path(relaypacs.__file__).parent
        offenders = []
        for source in package.rglob("*.py"):
            code = source.read_text()
            if re.search(r"\b(update|delete)\(\s*AuditEvent\b", code) or re.search(
                r"(?i)\b(update|delete\s+from)\s+audit_event\b", code
            ):
                offenders.append(source.relative_to(package))
        # The migration creates the triggers that refuse exactly these statements.
        assert [str(o) for o in offenders if "migrations" not in str(o)] == []
