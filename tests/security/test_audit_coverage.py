"""One record for every audited action, on a real gateway process: login (success and
failure), token refresh reuse, TOTP change, user administration, upload start and
completion, forwarding outcome, a read of a study's data and refused authorisations.
Each one done once, then found in the admin query and in both exports: who, what, which
object, outcome and from where, and no patient name anywhere.

Reports are not in the list: the gateway has no endpoint that reads one yet (a report is
a row made at delivery); the read of a study's data is ``GET /uploads/{id}``."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from relaypacs.devtools.synth import FAKE_PATIENTS
from tests.api.uploading import content_md5, make_study
from tests.gateway import create_user, run_gateway
from tests.pacs import FaultPacs
from tests.security.live import CHUNK_SIZE, PASSWORD, SECRET_KEY

API = "/api/v1"
PACS_AUTH = ("gateway", "audit-coverage-pacs-password")
CLIENT = "127.0.0.1"
# What the records are compared on.
FIELDS = (
    "action",
    "outcome",
    "actor_id",
    "actor_role",
    "object_type",
    "object_id",
    "study_instance_uid",
    "client_ip",
)


def login(client: httpx.Client, username: str, **extra: Any) -> dict[str, Any]:
    response = client.post(
        f"{API}/auth/login", json={"username": username, "password": PASSWORD, **extra}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def me(client: httpx.Client, headers: dict[str, str]) -> str:
    response = client.get(f"{API}/auth/me", headers=headers)
    assert response.status_code == 200, response.text
    user_id: str = response.json()["id"]
    return user_id


def row(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record[field] or None for field in FIELDS)


@pytest.fixture
def pacs() -> Iterator[FaultPacs]:
    with FaultPacs(auth=PACS_AUTH) as server:
        yield server


def test_every_listed_action_has_its_record_in_the_query_and_the_exports(
    tmp_path: Path, pacs: FaultPacs
) -> None:
    data = tmp_path / "data"
    env = {
        "RELAYPACS_SECRET_KEY": SECRET_KEY,
        "RELAYPACS_CHUNK_SIZE": str(CHUNK_SIZE),
        "RELAYPACS_PACS_URL": pacs.dicomweb_url,
        "RELAYPACS_PACS_USERNAME": PACS_AUTH[0],
        "RELAYPACS_PACS_PASSWORD": PACS_AUTH[1],
        "RELAYPACS_FORWARD_POLL_SECONDS": "0.1",
        # TOTP is the subject for the administrator only: the radiologist's refusal is one
        # of the role, not of a missing second factor.
        "RELAYPACS_TOTP_REQUIRED_ROLES": '["admin"]',
    }
    # User administration from the command line (`relaypacs users create`).
    for username, role in [
        ("boss", "admin"),
        ("clin", "clinician"),
        ("other", "clinician"),
        ("rad", "radiologist"),
    ]:
        create_user(data, username, PASSWORD, role=role, env=env)

    with (
        run_gateway(data, env, log_path=tmp_path / "gateway.log") as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        # The administrator enrols a second factor (the default policy for the role): a
        # TOTP change. The token of that login keeps the role's full use.
        boss_login = login(client, "boss")
        assert boss_login["totp_enrolment_required"] is True
        admin = bearer(boss_login["access_token"])
        boss_id = me(client, admin)
        enrolment = client.post(
            f"{API}/auth/totp/enrol", json={"password": PASSWORD}, headers=admin
        )
        assert enrolment.status_code == 200, enrolment.text
        code = pyotp.TOTP(enrolment.json()["secret"]).now()
        confirm = client.post(f"{API}/auth/totp/confirm", json={"code": code}, headers=admin)
        assert confirm.status_code == 200, confirm.text

        # Logins: a failure, then a success.
        wrong = client.post(f"{API}/auth/login", json={"username": "clin", "password": "nope"})
        assert wrong.status_code == 401
        clin_login = login(client, "clin", refresh_in_body=True)
        clin = bearer(clin_login["access_token"])
        clin_id = me(client, clin)
        sessions = client.get(f"{API}/auth/sessions", headers=clin).json()
        assert len(sessions) == 1
        clin_session = sessions[0]["id"]

        # Refresh reuse: the rotated token presented again ends the session.
        first = clin_login["refresh_token"]
        rotated = client.post(f"{API}/auth/refresh", json={"refresh_token": first})
        assert rotated.status_code == 200, rotated.text
        reused = client.post(f"{API}/auth/refresh", json={"refresh_token": first})
        assert reused.status_code == 401, reused.text
        clin = bearer(login(client, "clin")["access_token"])  # a new session, to go on
        sessions = client.get(f"{API}/auth/sessions", headers=clin).json()
        clin_session_2 = next(s["id"] for s in sessions if s["id"] != clin_session)

        # User administration: create a user, disable them.
        created = client.post(
            f"{API}/admin/users", json={"username": "newbie", "role": "clinician"}, headers=admin
        )
        assert created.status_code == 201, created.text
        newbie_id = created.json()["id"]
        disabled = client.post(f"{API}/admin/users/{newbie_id}/disable", headers=admin)
        assert disabled.status_code == 200, disabled.text

        # Upload start and completion, then forwarding to the PACS.
        study = make_study(2)
        init = client.post(f"{API}/uploads", json=study.manifest(), headers=clin)
        assert init.status_code == 201, init.text
        upload_id = init.json()["id"]
        for index, data_bytes in enumerate(study.files):
            put = client.put(
                f"{API}/uploads/{upload_id}/files/{index}/chunks/0",
                content=data_bytes,
                headers={**clin, "Content-MD5": content_md5(data_bytes)},
            )
            assert put.status_code == 200, put.text
        done = client.post(f"{API}/uploads/{upload_id}/complete", headers=clin)
        assert done.status_code == 202, done.text
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            polled = client.get(f"{API}/uploads/{upload_id}?files=false", headers=clin)
            status = polled.json()["status"]  # the uploader's own poll: not a record
            if status == "delivered":
                break
            time.sleep(0.2)
        assert status == "delivered"

        # A read of the study's data.
        assert client.get(f"{API}/uploads/{upload_id}", headers=clin).status_code == 200

        # Refused authorisations: another user's object (a 404), a role (a 403).
        other = bearer(login(client, "other")["access_token"])
        other_id = me(client, other)
        assert client.get(f"{API}/uploads/{upload_id}", headers=other).status_code == 404
        rad_login = login(client, "rad")
        rad = bearer(rad_login["access_token"])
        rad_id = me(client, rad)
        by_role = client.post(f"{API}/admin/uploads/{upload_id}/retry", headers=rad)
        assert by_role.status_code == 403

        # The admin's view.
        query = client.get(f"{API}/admin/audit", params={"limit": 500}, headers=admin)
        assert query.status_code == 200, query.text
        records = list(reversed(query.json()["items"]))
        assert query.json()["next_before"] is None  # all of them on one page
        exports = {
            fmt: client.get(f"{API}/admin/audit/export", params={"format": fmt}, headers=admin)
            for fmt in ("csv", "jsonl")
        }
        rad_sessions = client.get(f"{API}/auth/sessions", headers=rad).json()
        boss_sessions = client.get(f"{API}/auth/sessions", headers=admin).json()
        other_sessions = client.get(f"{API}/auth/sessions", headers=other).json()

    up, ses, usr, ip = "upload", "session", "user", CLIENT
    uid = study.uid
    admin_, clin_, rad_ = "admin", "clinician", "radiologist"
    boss_session, other_session = boss_sessions[0]["id"], other_sessions[0]["id"]
    rad_session = rad_sessions[0]["id"]
    expected = [
        # The command line: no actor, no address.
        ("user.create", "success", None, None, usr, boss_id, None, None),
        ("user.create", "success", None, None, usr, clin_id, None, None),
        ("user.create", "success", None, None, usr, other_id, None, None),
        ("user.create", "success", None, None, usr, rad_id, None, None),
        ("auth.login", "success", boss_id, admin_, ses, boss_session, None, ip),
        ("auth.totp_enrol", "success", boss_id, admin_, usr, boss_id, None, ip),
        ("auth.totp_confirm", "success", boss_id, admin_, usr, boss_id, None, ip),
        ("auth.login", "failure", clin_id, None, None, None, None, ip),
        ("auth.login", "success", clin_id, clin_, ses, clin_session, None, ip),
        ("auth.refresh", "success", clin_id, clin_, ses, clin_session, None, ip),
        ("auth.refresh_reuse", "failure", clin_id, clin_, ses, clin_session, None, ip),
        ("auth.login", "success", clin_id, clin_, ses, clin_session_2, None, ip),
        # One record per administrator action (not a second one without its actor).
        ("admin.user_create", "success", boss_id, admin_, usr, newbie_id, None, ip),
        ("admin.user_disable", "success", boss_id, admin_, usr, newbie_id, None, ip),
        ("upload.start", "success", clin_id, clin_, up, upload_id, uid, ip),
        ("upload.complete", "success", clin_id, clin_, up, upload_id, uid, ip),
        ("forward.delivered", "success", None, None, up, upload_id, uid, None),
        ("upload.read", "success", clin_id, clin_, up, upload_id, uid, ip),
        ("auth.login", "success", other_id, clin_, ses, other_session, None, ip),
        ("access.denied", "denied", other_id, clin_, up, upload_id, uid, ip),
        ("auth.login", "success", rad_id, rad_, ses, rad_session, None, ip),
        ("access.denied", "denied", rad_id, rad_, up, upload_id, None, ip),
    ]
    # Every record but the admin's own query of the log, in order, one per action.
    assert [row(r) for r in records if r["action"] != "audit.query"] == expected
    by_action = {r["action"]: r for r in records}
    failed_login = next(r for r in records if r["outcome"] == "failure")
    assert failed_login["details"] == {"reason": "bad_credentials"}
    assert by_action["forward.delivered"]["details"]["confirmed"] == 2
    denials = [r for r in records if r["action"] == "access.denied"]
    assert [d["details"]["endpoint"] for d in denials] == [
        f"GET {API}/uploads/{{upload_id}}",
        f"POST {API}/admin/uploads/{{upload_id}}/retry",
    ]
    assert [d["details"]["reason"] for d in denials] == ["not_owner", "role"]

    # Both exports: the same records, oldest first, then the admin's own query and exports
    # (each export is recorded before it is streamed: it lists itself).
    for response in exports.values():
        assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in exports["jsonl"].text.splitlines() if line]
    table = list(csv.DictReader(io.StringIO(exports["csv"].text)))
    for exported, views in [
        (lines, ["audit.query", "audit.export", "audit.export"]),
        (table, ["audit.query", "audit.export"]),
    ]:
        assert [row(r) for r in exported[: len(expected)]] == expected
        assert [int(r["id"]) for r in exported[: len(records)]] == [r["id"] for r in records]
        assert [r["action"] for r in exported[len(expected) :]] == views
        assert {r["actor_id"] for r in exported[len(expected) :]} == {boss_id}

    # Ids and StudyInstanceUIDs, never a patient's name or birth date.
    manifest_name = study.manifest()["metadata"]["patient_name"]
    for text in (query.text, exports["csv"].text, exports["jsonl"].text):
        for patient in FAKE_PATIENTS:
            assert patient.name not in text
            assert patient.birth_date not in text
        assert manifest_name not in text
        assert uid in text
