"""The report lifecycle through the API: opening, assignment (by hand and by rule), drafts,
signing, amending with every version kept, the worklist, the study view, and refusals."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI

from relaypacs.auth.models import Role
from tests.api.conftest import Account, MakeAccount
from tests.api.uploading import error_code
from tests.reports.conftest import VIEWER
from tests.reports.reporting import API, assign, deliver, sign, user_id


async def _assigned(
    app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount, **deliver_args: object
) -> tuple[Account, Account, Account, str]:
    """(uploader, radiologist, admin, report id): a delivered study assigned by an admin."""
    uploader = await make_account(Role.CLINICIAN)
    radiologist = await make_account(Role.RADIOLOGIST)
    admin = await make_account(Role.ADMIN)
    _, report_id = await deliver(app, client, uploader, **deliver_args)  # type: ignore[arg-type]
    response = await assign(client, admin, report_id, radiologist)
    assert response.status_code == 200, response.text
    return uploader, radiologist, admin, report_id


class TestLifecycle:
    async def test_pending_assigned_ready_amended_keeps_every_version(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        uploader = await make_account(Role.CLINICIAN)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        upload_id, report_id = await deliver(app, client, uploader)

        opened = await client.get(f"{API}/reports/{report_id}", headers=uploader.headers)
        assert opened.status_code == 200, opened.text
        assert opened.json()["status"] == "pending"
        assert opened.json()["upload_id"] == upload_id
        assert opened.json()["latest"] is None

        assigned = await assign(client, admin, report_id, radiologist)
        assert assigned.json()["status"] == "assigned"
        assert assigned.json()["radiologist_id"] == await user_id(client, radiologist)

        draft = await client.put(
            f"{API}/reports/{report_id}/draft",
            json={"findings": "Line one.\nLine two.", "impression": "Draft"},
            headers=radiologist.headers,
        )
        assert draft.status_code == 200, draft.text
        assert draft.json()["draft"] == {"findings": "Line one.\nLine two.", "impression": "Draft"}
        # The uploader never sees the working copy.
        seen = await client.get(f"{API}/reports/{report_id}", headers=uploader.headers)
        assert seen.json()["draft"] is None
        assert seen.json()["status"] == "assigned"

        signed = await client.post(
            f"{API}/reports/{report_id}/sign",
            json={"impression": "Normal."},
            headers=radiologist.headers,
        )
        assert signed.status_code == 200, signed.text
        body = signed.json()
        assert body["status"] == "ready"
        assert body["version"] == 1
        assert body["latest"]["findings"] == "Line one.\nLine two."
        assert body["latest"]["impression"] == "Normal."
        assert body["ready_at"] is not None

        amended = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={
                "findings": "Small nodule, right lower lobe.",
                "impression": "Follow up in 6 months.",
                "reason": "Nodule missed on first read.",
            },
            headers=radiologist.headers,
        )
        assert amended.status_code == 200, amended.text
        assert amended.json()["status"] == "amended"

        final = await client.get(f"{API}/reports/{report_id}", headers=uploader.headers)
        versions = final.json()["versions"]
        assert [v["version"] for v in versions] == [1, 2]
        assert versions[0]["impression"] == "Normal."
        assert versions[1]["reason"] == "Nodule missed on first read."
        assert final.json()["latest"]["impression"] == "Follow up in 6 months."
        first = await client.get(f"{API}/reports/{report_id}/versions/1", headers=uploader.headers)
        assert first.status_code == 200
        assert first.json()["findings"] == "Line one.\nLine two."
        missing = await client.get(
            f"{API}/reports/{report_id}/versions/3", headers=uploader.headers
        )
        assert missing.status_code == 404
        assert error_code(missing) == "report_version_not_found"

    async def test_a_report_is_opened_once_per_upload(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        from relaypacs.reports.service import open_report
        from relaypacs.state import app_state

        uploader = await make_account(Role.CLINICIAN)
        upload_id, report_id = await deliver(app, client, uploader)
        async with app_state(app).db.sessionmaker() as session, session.begin():
            await open_report(session, upload_id=uuid.UUID(upload_id))  # delivered again
        listed = await client.get(f"{API}/reports", headers=uploader.headers)
        assert [r["id"] for r in listed.json()["items"]] == [report_id]


class TestRefusals:
    async def test_a_signed_report_is_not_edited_without_amending(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, radiologist, admin, report_id = await _assigned(app, client, make_account)
        assert (await sign(client, radiologist, report_id)).status_code == 200
        draft = await client.put(
            f"{API}/reports/{report_id}/draft",
            json={"findings": "changed"},
            headers=radiologist.headers,
        )
        assert draft.status_code == 409
        assert error_code(draft) == "report_signed"
        again = await sign(client, radiologist, report_id, findings="other")
        assert again.status_code == 409
        reassigned = await assign(client, admin, report_id, radiologist)
        assert reassigned.status_code == 409
        read = await client.get(f"{API}/reports/{report_id}", headers=radiologist.headers)
        assert read.json()["latest"]["findings"] == "No acute abnormality."  # nothing lost
        assert read.json()["version"] == 1

    async def test_amending_an_unsigned_report_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, radiologist, _, report_id = await _assigned(app, client, make_account)
        response = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={"findings": "a", "impression": "b", "reason": "c"},
            headers=radiologist.headers,
        )
        assert response.status_code == 409
        assert error_code(response) == "report_not_signed"

    async def test_signing_an_empty_report_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, radiologist, _, report_id = await _assigned(app, client, make_account)
        response = await client.post(
            f"{API}/reports/{report_id}/sign",
            json={"findings": "  ", "impression": "Normal."},
            headers=radiologist.headers,
        )
        assert response.status_code == 422
        assert error_code(response) == "report_empty"
        read = await client.get(f"{API}/reports/{report_id}", headers=radiologist.headers)
        assert read.json()["status"] == "assigned"

    async def test_bad_input_is_a_clear_422(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, radiologist, admin, report_id = await _assigned(app, client, make_account)
        for body in (
            {"findings": "nul\x00byte"},
            {"findings": "x" * 20_001},
            {"findings": 12},
        ):
            response = await client.put(
                f"{API}/reports/{report_id}/draft", json=body, headers=radiologist.headers
            )
            assert response.status_code == 422, body
            assert error_code(response) == "invalid_request"
        amend = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={"findings": "a", "impression": "b"},
            headers=radiologist.headers,
        )
        assert amend.status_code == 422  # no reason
        not_uuid = await client.get(f"{API}/reports/not-a-uuid", headers=radiologist.headers)
        assert not_uuid.status_code == 422
        bad_filter = await client.get(
            f"{API}/reports", params={"status": "done"}, headers=radiologist.headers
        )
        assert bad_filter.status_code == 422
        bad_modality = await client.put(
            f"{API}/admin/radiologists/{await user_id(client, radiologist)}/modalities",
            json={"modalities": ["ct; drop"]},
            headers=admin.headers,
        )
        assert bad_modality.status_code == 422

    async def test_only_an_active_radiologist_is_assigned(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        uploader = await make_account(Role.CLINICIAN)
        admin = await make_account(Role.ADMIN)
        _, report_id = await deliver(app, client, uploader)
        to_clinician = await assign(client, admin, report_id, uploader)
        assert to_clinician.status_code == 422
        assert error_code(to_clinician) == "not_a_radiologist"
        nobody = await client.post(
            f"{API}/admin/reports/{report_id}/assign",
            json={"radiologist_id": str(uuid.uuid4())},
            headers=admin.headers,
        )
        assert nobody.status_code == 422
        missing = await client.post(
            f"{API}/admin/reports/{uuid.uuid4()}/assign",
            json={"radiologist_id": str(uuid.uuid4())},
            headers=admin.headers,
        )
        assert missing.status_code == 404
        assert error_code(missing) == "report_not_found"


class TestWhoSeesWhat:
    async def test_another_clinicians_report_is_a_404(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, _, _, report_id = await _assigned(app, client, make_account)
        other = await make_account(Role.CLINICIAN)
        for path in ("", "/study", "/versions/1"):
            response = await client.get(f"{API}/reports/{report_id}{path}", headers=other.headers)
            assert response.status_code == 404, path
            assert error_code(response) == "report_not_found"
        # The same answer as a report that does not exist.
        missing = await client.get(f"{API}/reports/{uuid.uuid4()}", headers=other.headers)
        assert (
            missing.json()["error"]
            == (await client.get(f"{API}/reports/{report_id}", headers=other.headers)).json()[
                "error"
            ]
        )
        listed = await client.get(f"{API}/reports", headers=other.headers)
        assert listed.json() == {"items": [], "total": 0}

    async def test_a_radiologist_cannot_read_or_sign_a_report_not_assigned_to_them(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, radiologist, _, report_id = await _assigned(app, client, make_account)
        other = await make_account(Role.RADIOLOGIST)
        read = await client.get(f"{API}/reports/{report_id}", headers=other.headers)
        assert read.status_code == 404
        signed = await sign(client, other, report_id)
        assert signed.status_code == 404
        assert error_code(signed) == "report_not_found"
        draft = await client.put(
            f"{API}/reports/{report_id}/draft", json={"findings": "x"}, headers=other.headers
        )
        assert draft.status_code == 404
        still = await client.get(f"{API}/reports/{report_id}", headers=radiologist.headers)
        assert still.json()["status"] == "assigned"
        assert still.json()["draft"] == {"findings": None, "impression": None}

    async def test_roles_the_policy_refuses(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        uploader, radiologist, _, report_id = await _assigned(app, client, make_account)
        # The uploader reads the report but never writes it; nor assigns.
        sign_own = await sign(client, uploader, report_id)
        assert sign_own.status_code == 403
        assigning = await assign(client, radiologist, report_id, radiologist)
        assert assigning.status_code == 403
        radiologists = await client.get(f"{API}/admin/radiologists", headers=uploader.headers)
        assert radiologists.status_code == 403
        anonymous = await client.get(f"{API}/reports/{report_id}")
        assert anonymous.status_code == 401

    async def test_an_administrator_reads_every_report_and_is_audited(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        _, _, admin, report_id = await _assigned(app, client, make_account)
        read = await client.get(f"{API}/reports/{report_id}", headers=admin.headers)
        assert read.status_code == 200
        audit = await client.get(
            f"{API}/admin/audit",
            params={"action": "report.read", "object_id": report_id},
            headers=admin.headers,
        )
        assert audit.status_code == 200, audit.text
        assert audit.json()["items"], audit.json()


class TestWorklist:
    async def test_assigned_to_me_oldest_first_with_filters(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        uploader = await make_account(Role.CLINICIAN)
        radiologist = await make_account(Role.RADIOLOGIST)
        admin = await make_account(Role.ADMIN)
        name = f"Worklist^Patient{uuid.uuid4().hex[:6]}"
        _, ct = await deliver(
            app, client, uploader, metadata={"patient_name": name, "modality": "CT"}
        )
        _, mr = await deliver(
            app,
            client,
            uploader,
            metadata={"patient_name": "ROE^RICHARD", "modality": "MR", "accession_number": "A7"},
        )
        _, unassigned = await deliver(app, client, uploader)
        for report_id in (ct, mr):
            assert (await assign(client, admin, report_id, radiologist)).status_code == 200

        async def ids(**params: str) -> list[str]:
            response = await client.get(
                f"{API}/reports", params=params, headers=radiologist.headers
            )
            assert response.status_code == 200, response.text
            return [r["id"] for r in response.json()["items"]]

        assert await ids() == [ct, mr]  # oldest first; not the unassigned one
        assert await ids(modality="MR") == [mr]
        assert await ids(q=name.split("^")[1].lower()) == [ct]
        assert await ids(q="a7") == [mr]
        assert await ids(q="100%") == []
        assert (await sign(client, radiologist, ct)).status_code == 200
        assert await ids(status="ready") == [ct]
        assert await ids(status="assigned") == [mr]
        today = (await client.get(f"{API}/reports/{ct}", headers=admin.headers)).json()[
            "created_at"
        ][:10]
        assert await ids(date_from=today, date_to=today) == [ct, mr]
        assert await ids(date_to="2001-01-01") == []
        # The uploader sees the reports of their uploads; the admin every report.
        own = await client.get(f"{API}/reports", headers=uploader.headers)
        assert [r["id"] for r in own.json()["items"]] == [ct, mr, unassigned]
        pending = await client.get(
            f"{API}/reports", params={"status": "pending"}, headers=admin.headers
        )
        assert unassigned in [r["id"] for r in pending.json()["items"]]


class TestStudyView:
    async def test_the_report_page_shows_the_study_and_the_viewer_link(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        from tests.api.uploading import make_study

        study = make_study(3)
        _, radiologist, _, report_id = await _assigned(app, client, make_account, study=study)
        response = await client.get(f"{API}/reports/{report_id}/study", headers=radiologist.headers)
        assert response.status_code == 200, response.text
        view = response.json()
        assert view["study_instance_uid"] == study.uid
        assert view["metadata"]["modality"] == "CT"
        assert view["series_count"] == 1
        assert view["instance_count"] == 3
        assert view["series"][0]["instances"] == 3
        # Not forwarded here (no PACS in this app): nothing confirmed yet.
        assert view["pacs_confirmed"] == "PACS confirmed 0/3"
        assert view["viewer_url"] == VIEWER.replace("{study_instance_uid}", study.uid)


class TestAssignmentRule:
    async def test_round_robin_among_the_radiologists_of_the_modality(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        uploader = await make_account(Role.CLINICIAN)
        modality = "X" + uuid.uuid4().hex[:6].upper()  # no other test's radiologist reads it
        readers = [await make_account(Role.RADIOLOGIST) for _ in range(2)]
        reader_ids = [await user_id(client, r) for r in readers]
        for reader_id in reader_ids:
            response = await client.put(
                f"{API}/admin/radiologists/{reader_id}/modalities",
                json={"modalities": [modality, "CT"]},
                headers=admin.headers,
            )
            assert response.status_code == 200, response.text
            assert response.json()["modalities"] == ["CT", modality]
        assigned_to = []
        for _ in range(4):
            _, report_id = await deliver(
                app, client, uploader, metadata={"modality": modality}, auto_assign=True
            )
            report = await client.get(f"{API}/reports/{report_id}", headers=admin.headers)
            assert report.json()["status"] == "assigned"
            assigned_to.append(report.json()["radiologist_id"])
        assert set(assigned_to) == set(reader_ids)
        assert assigned_to[0] != assigned_to[1]
        assert assigned_to[:2] == assigned_to[2:]  # turns, in the same order
        listed = await client.get(f"{API}/admin/radiologists", headers=admin.headers)
        mine = {r["id"]: r for r in listed.json()["items"] if r["id"] in reader_ids}
        assert [mine[i]["open_reports"] for i in reader_ids] == [2, 2]

    async def test_modalities_of_a_user_who_is_not_a_radiologist(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        clinician = await make_account(Role.CLINICIAN)
        response = await client.put(
            f"{API}/admin/radiologists/{await user_id(client, clinician)}/modalities",
            json={"modalities": ["CT"]},
            headers=admin.headers,
        )
        assert response.status_code == 404
        assert error_code(response) == "radiologist_not_found"


class TestTimeline:
    async def test_every_step_with_its_time(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        uploader, radiologist, admin, report_id = await _assigned(app, client, make_account)
        assert (await sign(client, radiologist, report_id)).status_code == 200
        amended = await client.post(
            f"{API}/reports/{report_id}/amend",
            json={"findings": "f", "impression": "i", "reason": "r"},
            headers=radiologist.headers,
        )
        assert amended.status_code == 200
        report = (await client.get(f"{API}/reports/{report_id}", headers=uploader.headers)).json()
        response = await client.get(
            f"{API}/uploads/{report['upload_id']}/timeline", headers=uploader.headers
        )
        assert response.status_code == 200, response.text
        timeline = response.json()
        steps = [s["step"] for s in timeline["steps"]]
        # No PACS in this app: nothing queued, the report opened as a delivery opens it.
        assert steps == [
            "started",
            "received",
            "validated",
            "report_opened",
            "report_assigned",
            "report_ready",
            "report_amended",
        ]
        assert timeline["steps"][2]["detail"] == "accepted 2 of 2 files"
        assert timeline["steps"][-1]["detail"] == "version 2"
        times = [s["at"] for s in timeline["steps"]]
        assert times == sorted(times)
        assert (
            await client.get(f"{API}/uploads/{report['upload_id']}/timeline", headers=admin.headers)
        ).status_code == 200
        for other in (await make_account(Role.CLINICIAN), radiologist):
            refused = await client.get(
                f"{API}/uploads/{report['upload_id']}/timeline", headers=other.headers
            )
            assert refused.status_code == 404
            assert error_code(refused) == "upload_not_found"
