"""No patient data in the server's logs: a real gateway process, a whole flow with a
recognisable patient name and birth date, and its captured stdout/stderr searched for them."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx

from relaypacs.devtools.synth import FAKE_PATIENTS, make_instance
from tests.api.uploading import content_md5, new_uid
from tests.security.live import CHUNK_SIZE, live_gateway
from tests.servers import free_port

PATIENT = next(p for p in FAKE_PATIENTS if p.name.startswith("ZZPHITEST^"))
NAME, BIRTH, PATIENT_ID = PATIENT.name, PATIENT.birth_date, PATIENT.patient_id
# Every form in which the data could show up in a log line.
NEEDLES = [NAME, "ZZPHITEST", "QUINTILIA", "MARGARETHE", BIRTH, "1923-09-17", PATIENT_ID]
API = "/api/v1"


def instance(study_uid: str, number: int, *, size: int = 256) -> bytes:
    return make_instance(
        study_uid=study_uid,
        series_uid=f"{study_uid}.1",
        sop_uid=new_uid(),
        rows=size,
        columns=size,
        instance_number=number,
        patient_name=NAME,
        patient_id=PATIENT_ID,
        birth_date=BIRTH,
        study_description=f"CT OF {NAME}",
        seed=number,
    )


def manifest(study_uid: str, files: list[bytes], **extra: Any) -> dict[str, Any]:
    return {
        "study_instance_uid": study_uid,
        "metadata": {
            "patient_name": NAME,
            "patient_id": PATIENT_ID,
            "study_description": f"CT OF {NAME} BORN {BIRTH}",
            "modality": "CT",
        },
        "files": [
            {
                "name": f"{NAME}/{BIRTH}/IM{i}",
                "size": len(f),
                "sha256": hashlib.sha256(f).hexdigest(),
            }
            for i, f in enumerate(files)
        ],
        **extra,
    }


def send(client: httpx.Client, upload_id: str, files: list[bytes]) -> None:
    for index, data in enumerate(files):
        for chunk_index, start in enumerate(range(0, len(data), CHUNK_SIZE)):
            chunk = data[start : start + CHUNK_SIZE]
            response = client.put(
                f"{API}/uploads/{upload_id}/files/{index}/chunks/{chunk_index}",
                content=chunk,
                headers={"Content-MD5": content_md5(chunk)},
            )
            assert response.status_code == 200, response.text


def test_a_whole_flow_leaves_no_patient_data_in_the_server_log(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    unreachable_pacs = f"http://127.0.0.1:{free_port()}/dicom-web"
    env = {
        "RELAYPACS_LOG_LEVEL": "debug",
        "RELAYPACS_PACS_URL": unreachable_pacs,
        "RELAYPACS_FORWARD_RETRY_DELAYS": "[0.1, 0.1]",
        "RELAYPACS_FORWARD_POLL_SECONDS": "0.2",
        # Below a file's size: the chunk PUT keeps its own limit on a real server.
        "RELAYPACS_MAX_REQUEST_BODY": str(64 * 1024),
    }
    accounts = {"clin": "clinician", "boss": "admin"}
    with (
        live_gateway(tmp_path / "data", log, accounts, env) as gateway,
        httpx.Client(base_url=gateway.base_url, timeout=60) as client,
    ):
        client.headers.update(gateway.accounts["clin"].headers)
        admin = gateway.accounts["boss"].headers

        # 1. A valid study: init, chunks, complete, then forwarding to a PACS that is down.
        study = new_uid()
        files = [instance(study, 1), instance(study, 2)]
        assert len(files[0]) > 64 * 1024
        upload = client.post(f"{API}/uploads", json=manifest(study, files))
        assert upload.status_code == 201, upload.text
        upload_id = upload.json()["id"]
        send(client, upload_id, files)
        done = client.post(f"{API}/uploads/{upload_id}/complete")
        assert done.status_code == 202, done.text
        assert client.get(f"{API}/uploads/{upload_id}").json()["metadata"]["patient_name"] == NAME
        deadline = time.monotonic() + 30
        forwarding: dict[str, Any] = {}
        while time.monotonic() < deadline:
            forwarding = client.get(f"{API}/uploads/{upload_id}?files=false").json()["forwarding"]
            if forwarding and forwarding["attempts"] >= 2:
                break
            time.sleep(0.3)
        assert forwarding["attempts"] >= 2, forwarding  # the PACS really failed, twice

        # 2. A study that fails validation: a text file with the patient's data, another study.
        rejected_uid = new_uid()
        bad_files = [
            instance(rejected_uid, 1, size=64),
            f"Patient: {NAME}, born {BIRTH}, id {PATIENT_ID}\n".encode() * 20,
            instance(new_uid(), 2, size=64),
        ]
        # By default the study goes on without its refused files (their reasons are recorded
        # and logged); in strict mode the whole upload is refused.
        bad = client.post(f"{API}/uploads", json=manifest(rejected_uid, bad_files)).json()
        send(client, bad["id"], bad_files)
        verdict = client.post(f"{API}/uploads/{bad['id']}/complete")
        assert verdict.status_code == 202, verdict.text
        assert verdict.json()["refused_files"] == 2
        codes = {f["error"]["code"] for f in verdict.json()["files"] if f["error"]}
        assert codes == {"not_dicom", "study_uid_mismatch"}
        strict_uid = new_uid()
        strict_files = [instance(strict_uid, 1, size=64), *bad_files[1:]]
        strict = client.post(
            f"{API}/uploads", json=manifest(strict_uid, strict_files) | {"all_or_nothing": True}
        ).json()
        send(client, strict["id"], strict_files)
        verdict = client.post(f"{API}/uploads/{strict['id']}/complete")
        assert verdict.status_code == 422, verdict.text
        codes = {f["code"] for f in verdict.json()["error"]["details"]["files"]}
        assert codes == {"not_dicom", "study_uid_mismatch"}

        # 3. Requests that carry patient data where it does not belong.
        refused = [
            client.post(f"{API}/uploads", json=manifest(new_uid(), files, patient=NAME)),
            client.post(
                f"{API}/uploads",
                json=manifest(new_uid(), files) | {"metadata": {"patient_name": NAME * 20}},
            ),
            client.get(f"{API}/uploads", params={"status": NAME, "birth": BIRTH}),
            client.post(f"{API}/auth/login", json={"username": NAME, "password": BIRTH}),
            client.post(
                f"{API}/uploads",
                content=f'{{"study_instance_uid": "{NAME}'.encode(),
                headers={"Content-Type": "application/json"},
            ),
            client.post(f"{API}/auth/login", content=NAME.encode() * 5000),  # over the cap
            client.get(f"{API}/uploads/{NAME}"),
            client.post(f"{API}/admin/uploads/{NAME}/retry"),  # a role refusal, audited
            client.get(f"{API}/{NAME}/{BIRTH}"),
        ]
        assert [r.status_code for r in refused] == [422, 422, 422, 401, 422, 413, 422, 403, 404]
        export = client.get(f"{API}/admin/audit/export?format=jsonl", headers=admin)
        assert export.status_code == 200
        for needle in NEEDLES:
            assert needle not in export.text  # the audit log has ids, never patient data

    text = log.read_text(errors="replace")
    # The log is the evidence of this flow: it has its requests and the PACS failures...
    assert f'"POST {API}/uploads/{{upload_id}}/complete upload_id={upload_id}" 202' in text
    assert f"chunks/{{chunk_index}} upload_id={upload_id} file_index=0 chunk_index=0" in text
    assert "retry" in text
    assert '"POST (no route)" 413' in text  # refused before routing
    # ...and none of the patient's data.
    for needle in NEEDLES:
        assert needle not in text, f"{needle!r} is in the server log"
