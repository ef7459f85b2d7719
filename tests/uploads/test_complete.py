"""The upload API end to end, on SQLite and on PostgreSQL, with the filesystem store:
completing an upload: what was sent is validated, refused files get their codes, the outcome
is audited."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from relaypacs.audit.models import AuditEvent
from relaypacs.devtools import synth, unusual
from relaypacs.state import app_state
from tests.api.conftest import Account
from tests.api.uploading import (
    API,
    Study,
    chunks_of,
    complete,
    error_code,
    init,
    make_study,
    put_chunk,
    read_uid,
    send_all,
    sha256_hex,
    upload_study,
)


async def audit_actions(app: FastAPI, object_id: str) -> list[str]:
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        rows = await session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.object_id == object_id)
            .order_by(AuditEvent.id)
        )
        return list(rows)


def twin_of(study: Study) -> bytes:
    """A valid instance of ``study`` with its first file's SOP Instance UID and other bytes."""
    sop = read_uid(study.files[0], "SOPInstanceUID")
    return synth.make_instance(
        study_uid=study.uid, series_uid="1.2.3", sop_uid=sop, rows=64, columns=64, seed=99
    )


class TestComplete:
    async def test_valid_study_is_validated_and_audited(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(3)
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "validated"
        assert body["instance_count"] == 3
        assert {f["status"] for f in body["files"]} == {"valid"}
        assert {f["kind"] for f in body["files"]} == {"instance"}
        assert body["completed_at"] is not None
        assert await audit_actions(app, body["id"]) == ["upload.start", "upload.complete"]
        again = await complete(client, clinician, body["id"])
        assert again.status_code == 202
        assert again.json()["status"] == "validated"

    async def test_missing_chunks_are_409_with_the_list(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        upload_id = (await init(client, clinician, study)).json()["id"]
        await put_chunk(client, clinician, upload_id, 0, 0, study.files[0])
        response = await complete(client, clinician, upload_id)
        assert response.status_code == 409
        assert error_code(response) == "upload_incomplete"
        assert response.json()["error"]["details"]["missing"] == [
            {"file_index": 1, "missing_chunks": [0]}
        ]

    async def test_wrong_sha256_rejects_that_file(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        manifest = study.manifest()
        manifest["files"][1]["sha256"] = sha256_hex(b"something else")
        upload_id = (
            await client.post(f"{API}/uploads", json=manifest, headers=clinician.headers)
        ).json()["id"]
        await send_all(client, clinician, upload_id, study)
        response = await complete(client, clinician, upload_id)
        assert response.status_code == 202, response.text
        files = response.json()["files"]
        assert [(f["status"], (f["error"] or {}).get("code")) for f in files] == [
            ("valid", None),
            ("rejected", "sha256_mismatch"),
        ]
        assert response.json()["refused_files"] == 1

    @pytest.mark.parametrize(
        ("make_bad", "code"),
        [
            (lambda s: b"%PDF-1.7 this is not dicom" * 50, "not_dicom"),
            (
                lambda s: unusual.make_truncated(s.files[0], keep=len(s.files[0]) // 2),
                "dicom_truncated",
            ),
            (lambda s: unusual.make_preamble_executable(), "dicom_preamble_executable"),
            (lambda s: unusual.make_deflate_bomb(), "dicom_inflate_too_large"),
            (lambda s: unusual.make_deep_nesting(), "dicom_too_deep"),
            (lambda s: unusual.make_missing_uid(), "dicom_missing_uid"),
            (lambda s: make_study(1).files[0], "study_uid_mismatch"),
        ],
        ids=[
            "not_dicom",
            "truncated",
            "exe_preamble",
            "deflate_bomb",
            "deep",
            "no_uid",
            "other_study",
        ],
    )
    @pytest.mark.parametrize("strict", [False, True], ids=["partial", "all_or_nothing"])
    async def test_bad_files_get_their_code_and_the_rest_is_kept(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        clinician: Account,
        make_bad: object,
        code: str,
        strict: bool,
    ) -> None:
        good = make_study(2, rows=512, columns=512)
        bad: bytes = make_bad(good)  # type: ignore[operator]
        study = Study(good.uid, [*good.files, bad], ["a.dcm", "b.dcm", "bad.dcm"], strict)
        upload_id = (await init(client, clinician, study)).json()["id"]
        await send_all(client, clinician, upload_id, study)
        response = await complete(client, clinician, upload_id)
        if strict:  # one refused file refuses the study
            assert response.status_code == 422, response.text
            files = response.json()["error"]["details"]["files"]
            assert [(f["index"], f["name"], f["code"]) for f in files] == [(2, "bad.dcm", code)]
            assert "all or nothing" in response.json()["error"]["message"]
        else:  # the study goes on without its bad file
            assert response.status_code == 202, response.text
            body = response.json()
            assert (body["instance_count"], body["refused_files"]) == (2, 1)
            files = [f for f in body["files"] if f["error"]]
            assert [(f["index"], f["name"], f["error"]["code"]) for f in files] == [
                (2, "bad.dcm", code)
            ]
            assert [f["forward_status"] for f in body["files"]] == ["pending", "pending", None]
        assert synth.DEFAULT_PATIENT.name not in str(files)  # error messages carry no patient data
        status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
        assert status.json()["status"] == ("rejected" if strict else "validated")
        # Every stored chunk is still there and intact.
        keys = [k async for k in app_state(app).storage.list(f"uploads/{upload_id}/")]
        assert len(keys) == sum(len(chunks_of(f)) for f in study.files)
        first = b"".join(
            [
                await app_state(app).storage.get(k)
                for k in sorted(keys)
                if k.split("/")[2].startswith("0-")
            ]
        )
        assert first == good.files[0]
        # The process is healthy and takes the next upload.
        assert (await client.get(f"{API}/health")).status_code == 200
        assert (await upload_study(client, clinician, make_study(1))).status_code == 202
        # Completing again changes nothing and answers the same.
        again = await complete(client, clinician, upload_id)
        assert again.status_code == (422 if strict else 202)

    async def test_dicomdir_is_accepted_but_not_an_instance(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        good = make_study(2)
        study = Study(
            good.uid, [*good.files, unusual.make_dicomdir_bytes()], ["a", "b", "DICOMDIR"]
        )
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        assert response.json()["instance_count"] == 2
        assert response.json()["files"][2]["kind"] == "dicomdir"

    async def test_non_executable_preamble_is_accepted_and_audited(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        tiff = unusual.make_tiff_preamble()
        uid = read_uid(tiff, "StudyInstanceUID")
        study = Study(uid, [tiff], ["tiff.dcm"])
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        assert response.json()["files"][0]["preamble"] == "nonzero"
        assert "dicom.preamble_nonzero" in await audit_actions(app, response.json()["id"])

    async def test_differing_copies_of_one_sop_instance_are_all_refused(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        good = make_study(2)
        twin = twin_of(good)
        truncated = unusual.make_truncated(good.files[0], keep=len(good.files[0]) // 2)
        study = Study(
            good.uid, [good.files[0], good.files[1], twin, truncated], ["a", "b", "twin", "cut"]
        )
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        files = response.json()["files"]
        # The truncated copy is refused for what it is and does not count as a copy; the two
        # valid copies with other bytes are both refused, each naming the other; b goes on.
        codes = [(f["name"], (f["error"] or {}).get("code")) for f in files]
        assert codes == [
            ("a", "duplicate_sop_instance"),
            ("b", None),
            ("twin", "duplicate_sop_instance"),
            ("cut", "dicom_truncated"),
        ]
        assert "twin (file 2)" in files[0]["error"]["message"]
        assert "a (file 0)" in files[2]["error"]["message"]
        assert response.json()["instance_count"] == 1

    async def test_an_upload_with_no_valid_instance_is_rejected(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        good = make_study(1)
        twin = twin_of(good)
        response = await upload_study(
            client, clinician, Study(good.uid, [good.files[0], twin], ["a", "b"])
        )
        assert response.status_code == 422
        files = response.json()["error"]["details"]["files"]
        assert [(f["index"], f["code"]) for f in files] == [
            (0, "duplicate_sop_instance"),
            (1, "duplicate_sop_instance"),
        ]
