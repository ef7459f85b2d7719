"""Hypothesis mutates real DICOM files (tests/fuzz/dicom_mutations.py): the validator
(relaypacs.dicom) and the upload's `complete` give every file a verdict with a known code,
never crash and never hang; a valid file stays accepted.

A short run here (RELAYPACS_TEST_FUZZ_EXAMPLES examples, 6 by default: x10 for the validator,
which is cheap); a long one by `RELAYPACS_TEST_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest
tests/fuzz`."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import httpx
import pydicom
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relaypacs.devtools.synth import DEFAULT_PATIENT, FAKE_PATIENTS, make_instance
from relaypacs.dicom import DicomLimits, DicomRejected, DicomSummary, inspect_file
from tests.api.uploading import new_uid
from tests.fuzz.dicom_mutations import (
    STUDY_CODES,
    VALIDATOR_CODES,
    mutated,
    seeds,
    still_valid,
)
from tests.security.live import LiveGateway, live_gateway

EXAMPLES = int(os.environ.get("RELAYPACS_TEST_FUZZ_EXAMPLES", "6"))
# A hang, not a speed: the walk of these small files takes milliseconds; the production
# bound is the validator pool's per-file wall time (DicomLimits.timeout_seconds, 30 s).
HANG_SECONDS = DicomLimits().timeout_seconds
PHI = [value for p in FAKE_PATIENTS for value in (p.name, p.patient_id, p.birth_date)]

_pool = ThreadPoolExecutor(1)


def verdict(data: bytes) -> DicomSummary | DicomRejected:
    """inspect_file on these bytes: a summary or a rejection with a known code, within the
    per-file time bound; anything else (another exception, a hang) fails the test."""
    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
        handle.write(data)
        handle.flush()
        future = _pool.submit(inspect_file, Path(handle.name))
        try:
            found: DicomSummary | DicomRejected = future.result(timeout=HANG_SECONDS)
        except DicomRejected as exc:
            found = exc
        except FutureTimeout:
            pytest.fail(f"inspect_file did not return within {HANG_SECONDS} s")
    if isinstance(found, DicomRejected):
        assert found.code in VALIDATOR_CODES, found.code
        assert found.message
        assert not any(value in found.message for value in PHI)
    return found


FUZZ = settings(
    max_examples=EXAMPLES * 10,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_every_seed_is_valid() -> None:
    """The mutations start from files the validator accepts (else the run proves nothing)."""
    for seed in seeds():
        assert isinstance(verdict(seed.data), DicomSummary), seed.name


@FUZZ
@given(mutated())
def test_validator_gives_a_known_verdict(case: tuple[str, bytes]) -> None:
    description, data = case
    found = verdict(data)
    if isinstance(found, DicomSummary) and found.kind == "instance":
        # Accepted: pydicom reads it and agrees on what it is.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's about the VR it guessed
            dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        assert str(dataset.SOPInstanceUID) == found.sop_instance_uid, description


@FUZZ
@given(still_valid())
def test_a_valid_file_stays_accepted(case: tuple[str, bytes]) -> None:
    name, data = case
    found = verdict(data)
    assert isinstance(found, DicomSummary), (name, found)
    assert found.kind == "instance"


# --- through the upload's `complete` ---------------------------------------------------------

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    tmp = tmp_path_factory.mktemp("dicomfuzz")
    env = {
        "RELAYPACS_CHUNK_SIZE": str(CHUNK),
        "RELAYPACS_RATE_LIMIT_UPLOAD_INIT": "100000/minute",
        "RELAYPACS_RATE_LIMIT_UPLOAD_CHUNK": "1000000/minute",
    }
    with live_gateway(tmp / "data", tmp / "gateway.log", {"clin": "clinician"}, env) as live:
        yield live


def _upload(http: httpx.Client, study_uid: str, files: list[bytes]) -> httpx.Response:
    manifest = {
        "study_instance_uid": study_uid,
        "metadata": {"patient_name": DEFAULT_PATIENT.name},
        "files": [
            {"name": f"F{i}.dcm", "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for i, d in enumerate(files)
        ],
    }
    created = http.post("/uploads", json=manifest)
    assert created.status_code == 201, created.text
    upload_id = created.json()["id"]
    for index, data in enumerate(files):
        for c in range(0, len(data), CHUNK):
            body = data[c : c + CHUNK]
            digest = hashlib.sha256(body).digest()
            put = http.put(
                f"/uploads/{upload_id}/files/{index}/chunks/{c // CHUNK}",
                content=body,
                headers={"Content-Digest": f"sha-256=:{base64.b64encode(digest).decode()}:"},
            )
            assert put.status_code == 200, put.text
    return http.post(f"/uploads/{upload_id}/complete")


def test_complete_gives_each_file_a_known_verdict(gateway: LiveGateway) -> None:
    http = httpx.Client(
        base_url=gateway.base_url + "/api/v1",
        headers=gateway.accounts["clin"].headers,
        timeout=120,
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(mutated(), min_size=1, max_size=3))
    @example([("one zero byte", b"\x00")])
    def run(cases: list[tuple[str, bytes]]) -> None:
        # One valid file of the declared study, then the mutated ones (another study each,
        # unless a mutation kept the seed's UIDs: judged against the declared one).
        study_uid = new_uid()
        valid = make_instance(
            study_uid=study_uid, series_uid=new_uid(), sop_uid=new_uid(), rows=16, columns=16
        )
        files = [valid] + [data for _, data in cases if data]
        response = _upload(http, study_uid, files)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "validated"
        verdicts = {f["index"]: f for f in body["files"]}
        assert verdicts[0]["status"] == "valid", verdicts[0]
        for index in range(1, len(files)):
            item = verdicts[index]
            if item["error"] is None:
                # Valid only if it is an instance of the declared study (never, from seeds
                # with their own study UID: a mutation that still parses keeps its UID or
                # breaks it).
                assert item["status"] == "valid"
            else:
                assert item["status"] == "rejected", item
                code = item["error"]["code"]
                assert code in VALIDATOR_CODES | STUDY_CODES, code
                assert item["error"]["message"]
        assert body["refused_files"] == sum(1 for f in body["files"] if f["error"] is not None)

    try:
        run()
    finally:
        http.close()
