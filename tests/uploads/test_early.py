"""Early verification (relaypacs.uploads.early): single-chunk files are verified while the study
is still uploading, and `complete` only verifies what is left. Its verdicts must be exactly
those `complete` gives on its own."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.devtools import unusual
from relaypacs.state import app_state
from relaypacs.uploads import verify
from tests.api.conftest import Account
from tests.api.uploading import (
    API,
    Study,
    chunks_of,
    complete,
    make_study,
    send_all,
    sha256_hex,
)


def mixed_study() -> tuple[Study, dict[str, Any]]:
    """Good instances (one of several chunks), every kind of bad file, a DICOMDIR and a file
    whose manifest SHA-256 is wrong; and its manifest."""
    good = make_study(3)
    big = make_study(1, rows=512, columns=512)  # 512 KiB: 3 chunks
    files = {
        "a.dcm": good.files[0],
        "b.dcm": good.files[1],
        "wrong-sha.dcm": good.files[2],
        "not-dicom.pdf": b"%PDF-1.7 this is not dicom" * 50,
        "truncated.dcm": unusual.make_truncated(good.files[0], keep=len(good.files[0]) // 2),
        "exe.dcm": unusual.make_preamble_executable(),
        "bomb.dcm": unusual.make_deflate_bomb(),
        "deep.dcm": unusual.make_deep_nesting(),
        "no-uid.dcm": unusual.make_missing_uid(),
        "tiff.dcm": unusual.make_tiff_preamble(),
        "DICOMDIR": unusual.make_dicomdir_bytes(),
        "big.dcm": big.files[0],
    }
    study = Study(good.uid, list(files.values()), list(files))
    manifest = study.manifest()
    manifest["files"][2]["sha256"] = sha256_hex(b"something else")
    return study, manifest


async def upload_and_complete(
    app: FastAPI,
    client: httpx.AsyncClient,
    account: Account,
    *,
    early: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[dict[str, Any]], list[int]]:
    """The files as `complete` judged them, and which files `complete` verified itself."""
    study, manifest = mixed_study()
    verifier = app_state(app).early_verifier
    if not early:
        monkeypatch.setattr(verifier, "submit", lambda *args: None)
    verified_at_complete: list[int] = []
    original = verify.verify_file

    async def spy(*args: Any, **kwargs: Any) -> verify.FileVerdict:
        verified_at_complete.append(kwargs["file"].index)
        return await original(*args, **kwargs)

    monkeypatch.setattr(verify, "verify_file", spy)
    response = await client.post(f"{API}/uploads", json=manifest, headers=account.headers)
    assert response.status_code == 201, response.text
    upload_id = response.json()["id"]
    await send_all(client, account, upload_id, study)
    single_chunk = sum(1 for f in study.files if len(chunks_of(f)) == 1)
    if early:
        async with asyncio.timeout(60):
            while verifier.ready(uuid.UUID(upload_id)) < single_chunk:
                await asyncio.sleep(0.05)
    response = await complete(client, account, upload_id)
    # Partial acceptance: the two valid instances go on without the ten refused files.
    assert response.status_code == 202, response.text
    assert response.json()["refused_files"] == 9
    assert response.json()["instance_count"] == 2
    view = await client.get(f"{API}/uploads/{upload_id}", headers=account.headers)
    files = [
        {k: f[k] for k in ("index", "name", "status", "kind", "preamble", "sop_instance_uid")}
        | {"code": (f["error"] or {}).get("code")}
        for f in view.json()["files"]
    ]
    monkeypatch.undo()
    return files, sorted(verified_at_complete)


async def test_early_and_complete_give_the_same_verdicts(
    app: FastAPI,
    client: httpx.AsyncClient,
    clinician: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    early, early_at_complete = await upload_and_complete(
        app, client, clinician, early=True, monkeypatch=monkeypatch
    )
    late, late_at_complete = await upload_and_complete(
        app, client, clinician, early=False, monkeypatch=monkeypatch
    )
    # Early: complete verified only the files of several chunks (the bomb, 2 MB, and big.dcm);
    # otherwise it verified them all.
    assert early_at_complete == [6, 11]
    assert late_at_complete == list(range(12))
    codes = {f["name"]: f["code"] for f in early}
    assert codes == {
        "a.dcm": None,
        "b.dcm": None,
        "wrong-sha.dcm": "sha256_mismatch",
        "not-dicom.pdf": "not_dicom",
        "truncated.dcm": "dicom_truncated",
        "exe.dcm": "dicom_preamble_executable",
        "bomb.dcm": "dicom_inflate_too_large",
        "deep.dcm": "dicom_too_deep",
        "no-uid.dcm": "dicom_missing_uid",
        "tiff.dcm": "study_uid_mismatch",  # a valid instance, of another study
        "DICOMDIR": None,
        "big.dcm": "study_uid_mismatch",
    }

    def comparable(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Each run has its own UIDs: compare whether a SOP Instance UID was found, not its value.
        return [f | {"sop_instance_uid": f["sop_instance_uid"] is not None} for f in files]

    assert comparable(early) == comparable(late)
    assert {f["name"]: f["preamble"] for f in early}["tiff.dcm"] == "nonzero"
    assert {f["name"]: f["kind"] for f in early}["DICOMDIR"] == "dicomdir"


async def test_a_valid_study_completes_from_early_results_alone(
    app: FastAPI,
    client: httpx.AsyncClient,
    clinician: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = make_study(4)
    response = await client.post(f"{API}/uploads", json=study.manifest(), headers=clinician.headers)
    upload_id = response.json()["id"]
    await send_all(client, clinician, upload_id, study)
    async with asyncio.timeout(60):
        while app_state(app).early_verifier.ready(uuid.UUID(upload_id)) < 4:
            await asyncio.sleep(0.05)

    async def refuse(*args: Any, **kwargs: Any) -> verify.FileVerdict:
        raise AssertionError("complete verified a file the early check had verified")

    monkeypatch.setattr(verify, "verify_file", refuse)
    response = await complete(client, clinician, upload_id)
    assert response.status_code == 202, response.text
    assert response.json()["instance_count"] == 4
    assert all(f["sop_instance_uid"] for f in response.json()["files"])
    # taken: a second complete (idempotent) does not find them again
    assert app_state(app).early_verifier.ready(uuid.UUID(upload_id)) == 0


async def test_a_cancelled_upload_leaves_no_results(
    app: FastAPI, client: httpx.AsyncClient, clinician: Account
) -> None:
    study = make_study(2)
    response = await client.post(f"{API}/uploads", json=study.manifest(), headers=clinician.headers)
    upload_id = response.json()["id"]
    await send_all(client, clinician, upload_id, study)
    async with asyncio.timeout(60):
        while app_state(app).early_verifier.ready(uuid.UUID(upload_id)) < 2:
            await asyncio.sleep(0.05)
    cancelled = await client.delete(f"{API}/uploads/{upload_id}", headers=clinician.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert app_state(app).early_verifier.ready(uuid.UUID(upload_id)) == 0


def test_results_are_bounded(tmp_path: Path) -> None:
    from relaypacs.uploads.early import EarlyResult, EarlyVerifier

    verifier = EarlyVerifier(None, None, max_results=3)  # type: ignore[arg-type]
    first, second = uuid.uuid4(), uuid.uuid4()
    result = EarlyResult("k", "0" * 64, None, None)
    for i in range(3):
        verifier._keep(first, i, result)
    verifier._keep(second, 0, result)  # the oldest other upload's results make room
    assert (verifier.ready(first), verifier.ready(second)) == (0, 1)
    for i in range(1, 4):
        verifier._keep(second, i, result)  # never its own: the newest is dropped instead
    assert verifier.ready(second) == 3
