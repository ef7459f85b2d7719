"""``relaypacs upload`` end to end, as a subprocess against a real ``relaypacs serve``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from relaypacs.client import (
    GatewayClient,
    NullProgress,
    StudyPlan,
    StudyStatus,
    UploadOptions,
    run_upload,
)
from relaypacs.devtools.synth import FAKE_PATIENTS, write_study
from relaypacs.devtools.unusual import make_missing_uid, make_truncated, new_uids
from tests.cli.conftest import Gateway
from tests.gateway import relaypacs_command, subprocess_env
from tests.phiscan import contains_patient_data, record_server_output


def run_cli(
    gateway: Gateway, state_dir: Path, *args: str, password: str | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run the CLI to completion; (exit code, its JSON summary, its stderr)."""
    completed = subprocess.run(
        [*relaypacs_command(), "upload", "--json", *args],
        env=_cli_env(gateway, state_dir, password),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        summary = json.loads(completed.stdout)
    except ValueError:
        raise AssertionError(
            f"stdout is not one JSON object:\n{completed.stdout}\n{completed.stderr}"
        ) from None
    return completed.returncode, summary, completed.stderr


def _cli_env(gateway: Gateway, state_dir: Path, password: str | None = None) -> dict[str, str]:
    return subprocess_env(
        {
            "RELAYPACS_SERVER": gateway.base_url,
            "RELAYPACS_USERNAME": gateway.username,
            "RELAYPACS_PASSWORD": password or gateway.password,
            "RELAYPACS_STATE_DIR": str(state_dir),
        }
    )


class Api:
    """The gateway's API as the test's own client (the same user as the CLI)."""

    def __init__(self, gateway: Gateway) -> None:
        self.http = httpx.Client(base_url=gateway.base_url + "/api/v1", timeout=30)
        login = self.http.post(
            "/auth/login", json={"username": gateway.username, "password": gateway.password}
        )
        login.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"

    def upload(self, upload_id: str) -> dict[str, Any]:
        response = self.http.get(f"/uploads/{upload_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def uploads_of(self, study_uid: str) -> list[dict[str, Any]]:
        response = self.http.get("/uploads", params={"limit": 100})
        response.raise_for_status()
        return [u for u in response.json()["items"] if u["study_instance_uid"] == study_uid]

    def close(self) -> None:
        self.http.close()


def missing_chunks(upload: dict[str, Any]) -> set[tuple[int, int]]:
    return {(f["index"], c) for f in upload["files"] for c in f["missing_chunks"]}


class TestUploadStudy:
    def test_uploads_a_study_then_a_rerun_sends_nothing(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        study = write_study(tmp_path / "study", instances=20, rows=128, columns=128)
        code, summary, _ = run_cli(gateway, state_dir, str(tmp_path / "study"))
        assert code == 0, summary
        [result] = summary["studies"]
        assert result["study_instance_uid"] == study.study_uid
        assert result["status"] == "validated"
        assert result["files"] == 20
        assert result["instances"] == 20
        assert result["bytes_sent"] == study.total_bytes
        assert result["bytes_skipped"] == 0
        assert summary["totals"]["validated"] == 1
        assert summary["exit_code"] == 0
        api = Api(gateway)
        try:
            server = api.upload(result["upload_id"])
        finally:
            api.close()
        assert server["status"] == "validated"
        assert server["instance_count"] == 20

        # Run again: already delivered, no chunk sent, no file hashed again.
        code, again, _ = run_cli(gateway, state_dir, str(tmp_path / "study"))
        assert code == 0, again
        [second] = again["studies"]
        assert second["status"] == "already_delivered"
        assert second["upload_id"] == result["upload_id"]
        assert second["chunks_sent"] == 0
        assert second["bytes_skipped"] == study.total_bytes
        assert again["totals"]["hash_cache_hits"] == 20

    def test_cd_export_with_dicomdir_and_stray_files(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        cd = tmp_path / "cd"
        study = write_study(cd, instances=6, rows=64, columns=64, with_dicomdir=True)
        (cd / "README.TXT").write_text("Viewer instructions\n")
        (cd / "AUTORUN.INF").write_text("[autorun]\n")
        code, summary, _ = run_cli(gateway, state_dir, str(cd))
        assert code == 0, summary
        [result] = summary["studies"]
        assert result["status"] == "validated"
        assert result["instances"] == 6
        assert result["files"] == 6  # the DICOMDIR is not sent
        assert summary["skipped"] == {"not_dicom": 2, "dicomdir": 1}
        api = Api(gateway)
        try:
            server = api.upload(result["upload_id"])
        finally:
            api.close()
        names = {f["name"] for f in server["files"]}
        assert len(names) == 6
        assert not any(name.upper().endswith("DICOMDIR") for name in names)
        assert {Path(p).relative_to(cd).as_posix() for p in study.paths} >= names

    def test_zip_and_folder_mixed(self, gateway: Gateway, state_dir: Path, tmp_path: Path) -> None:
        zipped = write_study(tmp_path / "a", instances=4, rows=64, columns=64)
        archive = tmp_path / "a.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in zipped.paths:
                zf.write(path, Path(path).relative_to(tmp_path / "a").as_posix())
        shutil.rmtree(tmp_path / "a")
        folder = write_study(tmp_path / "b", instances=3, rows=64, columns=64)
        code, summary, _ = run_cli(gateway, state_dir, str(archive), str(tmp_path / "b"))
        assert code == 0, summary
        by_uid = {s["study_instance_uid"]: s for s in summary["studies"]}
        assert by_uid[zipped.study_uid]["status"] == "validated"
        assert by_uid[zipped.study_uid]["instances"] == 4
        assert by_uid[folder.study_uid]["status"] == "validated"
        assert summary["archives"] == 1
        # Nothing extracted is left behind in the state directory.
        assert not any((state_dir / "extract").iterdir())

    def test_rejected_file_is_reported_by_name(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        study = write_study(tmp_path / "s", instances=3, rows=64, columns=64)
        bad = Path(sorted(study.paths)[1])
        # Cut in the pixel data: the header reads fine here, the server's validation
        # finds the file truncated.
        bad.write_bytes(make_truncated(bad.read_bytes(), bad.stat().st_size - 100))
        code, summary, _ = run_cli(gateway, state_dir, str(tmp_path / "s"))
        # The study goes on without its bad file: two of three accepted, exit code "partial".
        assert code == 6, summary
        [result] = summary["studies"]
        assert result["status"] == "partial"
        assert [(e["file"], e["code"]) for e in result["errors"]] == [
            (bad.relative_to(tmp_path / "s").as_posix(), "dicom_truncated")
        ]


class TestVerbose:
    def test_no_patient_data_in_the_log_nor_the_summary(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        """`-v` logs requests and retries: never a patient's name or birth date, whichever
        reader decoded the file (the fast one, pydicom for a name with several groups or a
        value that does not decode), whatever happened to it (accepted, refused, skipped).
        The summary on stdout names files and studies, never patients."""
        folder = tmp_path / "in"
        zz = next(p for p in FAKE_PATIENTS if p.name.startswith("ZZPHITEST^"))
        write_study(folder / "a", instances=2, rows=32, columns=32)  # DEFAULT_PATIENT
        write_study(
            folder / "b",
            instances=1,
            rows=32,
            columns=32,
            patient_name=zz.name,
            patient_id=zz.patient_id,
            birth_date=zz.birth_date,
            study_date="1997.04.24",
        )
        hong = next(p for p in FAKE_PATIENTS if "=" in p.name)
        _write_utf8_instance(folder / "c" / "IM1.dcm", hong.name, hong.birth_date)
        _write_utf8_instance(folder / "c" / "IM2.dcm", zz.name, zz.birth_date, bad_byte=True)
        refused = write_study(folder / "d", instances=1, rows=32, columns=32)
        path = Path(refused.paths[0])
        path.write_bytes(make_truncated(path.read_bytes(), path.stat().st_size - 100))
        (folder / "e").mkdir()
        (folder / "e" / "nostudy.dcm").write_bytes(make_missing_uid("StudyInstanceUID"))
        (folder / "e" / "notes.txt").write_text("no images here")
        completed = subprocess.run(
            [*relaypacs_command(), "upload", "-v", str(folder)],
            env=_cli_env(gateway, state_dir),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        record_server_output("cli-upload-verbose", completed.stderr)
        assert completed.returncode == 1, completed.stdout + completed.stderr
        assert "HTTP Request: POST" in completed.stderr  # -v logs the requests
        assert "e/nostudy.dcm" in completed.stdout
        assert "1 refused" in completed.stdout
        assert not contains_patient_data(completed.stderr)
        assert not contains_patient_data(completed.stdout)


def _write_utf8_instance(
    path: Path, patient_name: str, birth_date: str, *, bad_byte: bool = False
) -> None:
    """An instance in UTF-8 (ISO_IR 192) with ``patient_name``; with ``bad_byte``, a byte
    that does not decode in the name (pydicom decodes it with a warning)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ids = new_uids()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ids["sop_uid"]
    ds.StudyDate = "20240102"
    ds.Modality = "OT"
    ds.PatientName = patient_name
    ds.PatientID = "TEST0001"
    ds.PatientBirthDate = birth_date
    ds.StudyInstanceUID = ids["study_uid"]
    ds.SeriesInstanceUID = ids["series_uid"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    if bad_byte:
        data = path.read_bytes()
        name = patient_name.encode()
        path.write_bytes(data.replace(name, name[:-1] + b"\xff", 1))
    assert pydicom.dcmread(path).StudyInstanceUID == ids["study_uid"]


class TestFailures:
    def test_wrong_password_exits_4(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        write_study(tmp_path / "s", instances=1, rows=32, columns=32)
        code, summary, _ = run_cli(
            gateway, state_dir, str(tmp_path / "s"), password="not-the-password"
        )
        assert code == 4
        assert summary["exit_code"] == 4
        assert summary["studies"][0]["status"] == "not_started"

    def test_unreachable_server_exits_3(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        write_study(tmp_path / "s", instances=1, rows=32, columns=32)
        nowhere = Gateway("http://127.0.0.1:9", gateway.username, gateway.password, tmp_path)
        code, summary, _ = run_cli(nowhere, state_dir, str(tmp_path / "s"), "--retries", "1")
        assert code == 3
        assert "gave up" in summary["error"]

    def test_nothing_to_upload_exits_2(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no images here")
        code, summary, _ = run_cli(gateway, state_dir, str(tmp_path / "empty"))
        assert code == 2
        assert summary["skipped"] == {"not_dicom": 1}


class TestResumeAfterSigkill:
    def test_second_run_sends_exactly_the_missing_chunks(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        study = write_study(tmp_path / "big", instances=60, rows=512, columns=512)
        api = Api(gateway)
        try:
            upload, before, missing = _killed_midway(
                gateway, state_dir, api, study.study_uid, "--parallel", "2", str(tmp_path / "big")
            )
            total_chunks = sum(f["chunk_count"] for f in before["files"])
            assert 0 < len(missing) < total_chunks, "killed too late or too early"

            code, summary, _ = run_cli(gateway, state_dir, "--parallel", "2", str(tmp_path / "big"))
            assert code == 0, summary
            [result] = summary["studies"]
            assert result["upload_id"] == upload["id"]
            assert result["status"] == "validated"
            assert result["chunks_sent"] == len(missing)
            assert result["chunks_already_stored"] == 0
            chunk_size = before["chunk_size"]
            sizes = {f["index"]: f["size"] for f in before["files"]}
            expected_bytes = sum(min(chunk_size, sizes[f] - c * chunk_size) for f, c in missing)
            assert result["bytes_sent"] == expected_bytes
            assert result["bytes_skipped"] == study.total_bytes - expected_bytes
            assert summary["totals"]["hash_cache_hits"] == 60
            assert api.upload(upload["id"])["status"] == "validated"
        finally:
            api.close()


def _killed_midway(
    gateway: Gateway, state_dir: Path, api: Api, study_uid: str, *args: str
) -> tuple[dict[str, Any], dict[str, Any], set[tuple[int, int]]]:
    """A first run of the CLI (`args`) killed (SIGKILL) once the server has some of the study's
    chunks but not all: the upload when it was killed, the upload once the requests the kill
    cut have finished, and the chunks it then misses."""
    first = subprocess.Popen(
        [*relaypacs_command(), "upload", "--json", *args],
        env=_cli_env(gateway, state_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        upload = _wait_for_partial_upload(api, study_uid, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    before = _settled(api, upload["id"])
    return upload, before, missing_chunks(before)


def _wait_for_partial_upload(
    api: Api, study_uid: str, process: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """Poll the server until the CLI's upload has some chunks but not all of them."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the first run ended before it could be killed"
        uploads = api.uploads_of(study_uid)
        if uploads and uploads[0]["received_bytes"] > 0:
            return uploads[0]
        time.sleep(0.02)
    raise AssertionError("the first run never stored a chunk")


def _settled(api: Api, upload_id: str) -> dict[str, Any]:
    """The upload once requests cut by the kill have finished on the server."""
    previous = api.upload(upload_id)
    while True:
        time.sleep(0.5)
        current = api.upload(upload_id)
        if current["received_bytes"] == previous["received_bytes"]:
            return current
        previous = current


class _ChangeInPlace(NullProgress):
    """Rewrites the last byte of the study's first file once the study starts (after it was
    hashed), keeping its size and mtime: the one change the CLI's own checks cannot see."""

    def __init__(self) -> None:
        self.changed: str | None = None

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        file = plan.files[0]
        before = file.path.stat()
        data = bytearray(file.path.read_bytes())
        data[-1] ^= 0xFF
        file.path.write_bytes(bytes(data))
        os.utime(file.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.changed = file.name


async def test_a_file_changed_in_place_after_hashing_is_named_by_complete(
    gateway: Gateway, tmp_path: Path
) -> None:
    """A whole-file chunk is sent with the manifest's SHA-256 as its Content-Digest. When the
    bytes no longer have it, the gateway refuses the chunk (content_digest_mismatch); the CLI
    then sends the bytes with their own digest, and `complete` names the file: its SHA-256
    is not the manifest's. The other file goes on alone (a partial acceptance)."""
    study = tmp_path / "study"
    write_study(study, instances=2, rows=64, columns=64)  # one chunk per file
    progress = _ChangeInPlace()
    async with GatewayClient(
        gateway.base_url, username=gateway.username, password=gateway.password
    ) as client:
        summary = await run_upload(
            [study],
            client,
            options=UploadOptions(state_dir=tmp_path / "state"),
            progress=progress,
        )
    [result] = summary.studies
    assert progress.changed is not None
    assert result.status is StudyStatus.PARTIAL
    assert [(e.name, e.code) for e in result.errors] == [(progress.changed, "sha256_mismatch")]
    assert result.chunks_sent == 2


class TestChunkBatches:
    """Whole small files go several per request (``POST /uploads/{id}/chunks:batch``)."""

    def test_a_study_of_many_small_files_goes_in_batches_and_validates(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        study = write_study(tmp_path / "small", instances=60, rows=64, columns=64)
        code, summary, _ = run_cli(gateway, state_dir, str(tmp_path / "small"))
        assert code == 0, summary
        [result] = summary["studies"]
        assert result["status"] == "validated"
        assert result["chunks_sent"] == 60
        assert result["bytes_sent"] == study.total_bytes
        # 64 KiB chunks (the gateway's, tests/cli/conftest.py): about six files per batch
        assert 0 < result["batches_sent"] < 60
        api = Api(gateway)
        try:
            upload = api.upload(result["upload_id"])
            assert upload["status"] == "validated"
            assert upload["received_bytes"] == study.total_bytes
            assert {f["status"] for f in upload["files"]} == {"valid"}
        finally:
            api.close()

    def test_a_run_killed_mid_batch_resumes_and_sends_nothing_acknowledged_again(
        self, gateway: Gateway, state_dir: Path, tmp_path: Path
    ) -> None:
        study = write_study(tmp_path / "many", instances=600, rows=64, columns=64)
        api = Api(gateway)
        try:
            upload, before, missing = _killed_midway(
                gateway, state_dir, api, study.study_uid, "--parallel", "1", str(tmp_path / "many")
            )
            assert 0 < len(missing) < 600, "killed too late or too early"

            code, summary, _ = run_cli(
                gateway, state_dir, "--parallel", "1", str(tmp_path / "many")
            )
            assert code == 0, summary
            [result] = summary["studies"]
            assert result["upload_id"] == upload["id"]
            assert result["status"] == "validated"
            # Exactly what the server missed, none of it already stored there.
            assert result["chunks_sent"] == len(missing)
            assert result["chunks_already_stored"] == 0
            assert result["batches_sent"] > 0
            sizes = {f["index"]: f["size"] for f in before["files"]}
            assert result["bytes_sent"] == sum(sizes[f] for f, _ in missing)
            assert api.upload(upload["id"])["status"] == "validated"
        finally:
            api.close()
