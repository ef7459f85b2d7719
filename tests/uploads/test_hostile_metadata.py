"""What a client declares about a study is text a person reads: NUL and other control
characters are refused with a 422 naming the field, and nothing is stored (PostgreSQL answered
500 to a NUL; SQLite stored it)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import Account
from tests.api.uploading import error_code, make_study


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("metadata", "patient_name"), "DOE\x00JANE"),
        (("metadata", "patient_id"), "12\x003"),
        (("metadata", "study_description"), "CT\x1b[31m"),
        (("metadata", "accession_number"), "A\u0085B"),
        (("files", 0, "name"), "slice\x00.dcm"),
    ],
)
async def test_control_characters_are_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, clinician: Account, where: tuple[str | int, ...], value: str
) -> None:
    manifest = make_study(2).manifest()
    manifest.setdefault("metadata", {})
    target: Any = manifest
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    answer = await client.post("/api/v1/uploads", json=manifest, headers=clinician.headers)
    assert answer.status_code == 422, answer.text
    assert error_code(answer) == "invalid_request"
    fields = [p["field"] for p in answer.json()["error"]["details"]["problems"]]
    assert any(where[-1] in field for field in fields), fields
    listed = await client.get("/api/v1/uploads", headers=clinician.headers)
    assert listed.json()["total"] == 0
