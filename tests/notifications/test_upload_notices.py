"""The uploader is told of each step before the PACS: received, then validated or rejected,
once each, with ids and counts only (no patient data), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx

from relaypacs.devtools.synth import FAKE_PATIENTS
from tests.api.conftest import Account
from tests.api.uploading import API, Study, complete, init, make_study, send_all, upload_study


async def upload_notices(
    client: httpx.AsyncClient, account: Account, upload_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/notifications", headers=account.headers)
    assert response.status_code == 200, response.text
    mine = [n for n in response.json()["items"] if n["related_id"] == upload_id]
    return list(reversed(mine))  # oldest first


async def test_an_accepted_study_is_told_received_then_validated_once(
    client: httpx.AsyncClient, clinician: Account
) -> None:
    study = make_study(2)
    response = await upload_study(client, clinician, study)
    assert response.status_code in (200, 202), response.text
    upload_id = response.json()["id"]
    again = await complete(client, clinician, upload_id)  # idempotent: told nothing new
    assert again.status_code in (200, 202), again.text
    notices = await upload_notices(client, clinician, upload_id)
    assert [n["kind"] for n in notices] == ["upload_received", "upload_validated"]
    assert notices[0]["payload"] == {"files": 2}
    assert notices[1]["payload"] == {"instances": 2, "refused_files": 0}
    text = str(notices)
    assert not any(p.name.split("^")[0] in text for p in FAKE_PATIENTS)


async def test_a_refused_study_is_told_received_then_rejected(
    client: httpx.AsyncClient, clinician: Account
) -> None:
    study = make_study(1)
    bad = Study(study.uid, [b"%PDF-1.7 this is not dicom" * 50], ["report.pdf"])
    response = await init(client, clinician, bad)
    assert response.status_code == 201, response.text
    upload_id = response.json()["id"]
    await send_all(client, clinician, upload_id, bad)
    refused = await complete(client, clinician, upload_id)
    assert refused.status_code == 422, refused.text
    notices = await upload_notices(client, clinician, upload_id)
    assert [n["kind"] for n in notices] == ["upload_received", "upload_rejected"]
    assert notices[1]["payload"] == {"instances": 0, "refused_files": 1}
