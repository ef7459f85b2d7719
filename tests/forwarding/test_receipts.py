"""Every good instance reaches the PACS, and "PACS confirmed" means the PACS holds the same
bytes: partial acceptance, duplicates judged after validation, content-true receipts and
idempotent completion, through the HTTP API and the CLI, from real gateway processes to a real
Orthanc (SQLite, and PostgreSQL where concurrency is at stake)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs.devtools import synth, unusual
from tests.api.uploading import Study, make_study, new_uid, read_uid
from tests.conftest import POSTGRES_ADMIN_URL, _psql
from tests.forwarding.test_orthanc import CHUNK, PASSWORD, GatewayProcess, gateway
from tests.gateway import create_user, relaypacs_command, subprocess_env
from tests.pacs import OrthancServer, RecordingProxy, run_orthanc


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The gateway's database: its embedded SQLite, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield {}
        return
    name = f"relaypacs_receipts_{secrets.token_hex(4)}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+asyncpg://{POSTGRES_ADMIN_URL.removeprefix('postgresql://')}/{name}"
        yield {"RELAYPACS_DATABASE_URL": url}
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Api:
    """One user's HTTP client of the gateway."""

    def __init__(self, base: str, username: str = "clinician1") -> None:
        self.http = httpx.Client(base_url=base, timeout=60)
        answer = self.http.post("/auth/login", json={"username": username, "password": PASSWORD})
        self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def send(self, study: Study) -> str:
        """Start the upload and send every chunk; not completed."""
        upload = self.http.post("/uploads", json=study.manifest())
        assert upload.status_code == 201, upload.text
        upload_id: str = upload.json()["id"]
        for index, data in enumerate(study.files):
            for c in range(-(-len(data) // CHUNK)):
                chunk = data[c * CHUNK : (c + 1) * CHUNK]
                digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
                response = self.http.put(
                    f"/uploads/{upload_id}/files/{index}/chunks/{c}",
                    content=chunk,
                    headers={"Content-Digest": f"sha-256=:{digest}:"},
                )
                assert response.status_code == 200, response.text
        return upload_id

    def complete(self, upload_id: str) -> httpx.Response:
        return self.http.post(f"/uploads/{upload_id}/complete")

    def get(self, upload_id: str) -> httpx.Response:
        return self.http.get(f"/uploads/{upload_id}")

    def wait(self, upload_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = self.get(upload_id).json()
        while body["status"] not in ("delivered", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            body = self.get(upload_id).json()
        return body


@dataclass
class Gateway:
    process: GatewayProcess
    proxy: RecordingProxy

    @property
    def base(self) -> str:
        return self.process.base

    @property
    def server(self) -> str:
        return self.base.removesuffix("/api/v1")

    def sent(self) -> list[str | None]:
        """Every SOP Instance UID the gateway sent by STOW-RS, duplicates kept."""
        return self.proxy.sent_sop_instance_uids()


@pytest.fixture
def make_gateway(tmp_path: Path, orthanc: OrthancServer) -> Iterator[Any]:
    """Start a gateway (SQLite unless a database URL is given) forwarding to Orthanc through a
    recording proxy, with the users clinician1 and clinician2."""
    started: list[tuple[GatewayProcess, RecordingProxy]] = []

    def make(**env: str) -> Gateway:
        proxy = RecordingProxy(orthanc.base_url)
        proxy.__enter__()
        process = gateway(tmp_path / f"gw{len(started)}", "gw", proxy.dicomweb_url, orthanc, **env)
        process.data_dir.parent.mkdir(parents=True, exist_ok=True)
        started.append((process, proxy))
        for name in ("clinician1", "clinician2"):
            create_user(process.data_dir, name, PASSWORD, env=process.env)
        process.start()
        return Gateway(process, proxy)

    yield make
    for process, proxy in started:
        process.stop()
        proxy.__exit__(None, None, None)


def mixed_study() -> tuple[Study, dict[str, str | None], set[int]]:
    """A study of 5 valid instances with, among them: an identical copy of the first, two
    valid copies of a sixth instance that differ, a truncated copy of the second, a file that
    is not DICOM and a decompression bomb. Returns the study, each file's expected code (None:
    accepted) and the indexes of the instances the PACS is to hold."""
    good = make_study(6, rows=64, columns=64)
    sixth = good.files[5]
    twin = synth.make_instance(
        study_uid=good.uid,
        series_uid=read_uid(sixth, "SeriesInstanceUID"),
        sop_uid=read_uid(sixth, "SOPInstanceUID"),
        rows=64,
        columns=64,
        seed=77,
    )
    files = [
        ("IM0.dcm", good.files[0], None),
        ("IM1.dcm", good.files[1], None),
        ("IM2.dcm", good.files[2], None),
        ("IM3.dcm", good.files[3], None),
        ("IM4.dcm", good.files[4], None),
        ("copy-of-IM0.dcm", good.files[0], None),
        ("twin-a.dcm", sixth, "duplicate_sop_instance"),
        ("twin-b.dcm", twin, "duplicate_sop_instance"),
        (
            "cut.dcm",
            unusual.make_truncated(good.files[1], keep=len(good.files[1]) // 2),
            "dicom_truncated",
        ),
        ("notes.pdf", b"%PDF-1.7 not an image " * 40, "not_dicom"),
        ("bomb.dcm", unusual.make_deflate_bomb(), "dicom_inflate_too_large"),
    ]
    study = Study(good.uid, [f[1] for f in files], [f[0] for f in files])
    return study, {name: code for name, _, code in files}, {0, 1, 2, 3, 4}


def held_bytes(orthanc: OrthancServer, study: Study, indexes: set[int]) -> None:
    """Orthanc holds exactly these files of the study, byte for byte."""
    expected = {read_uid(study.files[i], "SOPInstanceUID"): study.files[i] for i in indexes}
    assert orthanc.sop_instance_uids(study.uid) == set(expected)
    for uid, data in expected.items():
        stored = orthanc.file_by_sop_uid(uid)
        assert stored is not None
        assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()


class TestPartialAcceptance:
    def test_the_valid_instances_go_on_without_the_bad_files(
        self, make_gateway: Any, orthanc: OrthancServer
    ) -> None:
        gw = make_gateway()
        api = Api(gw.base)
        study, codes, held = mixed_study()
        upload_id = api.send(study)
        answer = api.complete(upload_id)
        assert answer.status_code == 202, answer.text
        body = api.wait(upload_id)
        assert body["status"] == "delivered", body["forwarding"]
        assert (body["file_count"], body["refused_files"], body["instance_count"]) == (11, 5, 5)
        got = {f["name"]: (f["error"] or {}).get("code") for f in body["files"]}
        assert got == codes
        files = {f["name"]: f for f in body["files"]}
        assert files["copy-of-IM0.dcm"]["duplicate_of"] == 0
        assert files["copy-of-IM0.dcm"]["forward_status"] is None
        assert body["forwarding"]["confirmed"] == body["forwarding"]["instances"] == 5
        held_bytes(orthanc, study, held)
        # The identical copy was sent once; nothing refused was sent.
        assert sorted(gw.sent()) == sorted(read_uid(study.files[i], "SOPInstanceUID") for i in held)

        # The right copy of the refused instance, sent later, joins the same study at the PACS.
        fixed = Study(study.uid, [study.files[6]], ["IM5.dcm"])
        later = api.send(fixed)
        assert api.complete(later).status_code == 202
        assert api.wait(later)["status"] == "delivered"
        held_bytes(orthanc, Study(study.uid, study.files, []), held | {6})

    def test_all_or_nothing_forwards_nothing(
        self, make_gateway: Any, orthanc: OrthancServer
    ) -> None:
        gw = make_gateway()
        api = Api(gw.base)
        study, codes, _ = mixed_study()
        study.all_or_nothing = True
        upload_id = api.send(study)
        answer = api.complete(upload_id)
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["code"] == "upload_rejected"
        assert "all or nothing" in error["message"]
        assert {f["name"]: f["code"] for f in error["details"]["files"]} == {
            name: code for name, code in codes.items() if code
        }
        assert api.get(upload_id).json()["status"] == "rejected"
        time.sleep(1.0)  # a forwarder would have started by now
        assert gw.sent() == []
        assert orthanc.sop_instance_uids(study.uid) == set()

    def test_a_per_target_all_or_nothing(self, make_gateway: Any, tmp_path: Path) -> None:
        gw = make_gateway(RELAYPACS_PACS_ALL_OR_NOTHING="true")
        api = Api(gw.base)
        study, _, _ = mixed_study()
        answer = api.complete(api.send(study))
        assert answer.status_code == 422, answer.text
        assert gw.sent() == []


def run_cli(gw: Gateway, state: Path, *args: str) -> tuple[int, dict[str, Any]]:
    completed = subprocess.run(
        [*relaypacs_command(), "upload", "--json", "--wait", "--wait-timeout", "120", *args],
        env=subprocess_env(
            {
                "RELAYPACS_SERVER": gw.server,
                "RELAYPACS_USERNAME": "clinician1",
                "RELAYPACS_PASSWORD": PASSWORD,
                "RELAYPACS_STATE_DIR": str(state),
            }
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        return completed.returncode, json.loads(completed.stdout)
    except ValueError:
        raise AssertionError(f"{completed.stdout}\n{completed.stderr}") from None


def write_files(folder: Path, study: Study) -> None:
    folder.mkdir(parents=True)
    for name, data in zip(study.names, study.files, strict=True):
        (folder / name).write_bytes(data)


class TestCli:
    @pytest.mark.parametrize("strict", [False, True], ids=["partial", "all_or_nothing"])
    def test_the_cli_says_partial_and_the_pacs_holds_every_valid_instance(
        self, make_gateway: Any, orthanc: OrthancServer, tmp_path: Path, strict: bool
    ) -> None:
        gw = make_gateway()
        study, codes, held = mixed_study()
        write_files(tmp_path / "cd", study)
        args = ["--all-or-nothing"] if strict else []
        code, summary = run_cli(gw, tmp_path / "state", str(tmp_path / "cd"), *args)
        # The CLI reads headers only: the PDF is skipped as not DICOM; the bomb is a study of
        # its own (its own UIDs), refused whole.
        assert summary["skipped_files"]["not_dicom"] == ["notes.pdf"]
        [mine] = [s for s in summary["studies"] if s["study_instance_uid"] == study.uid]
        errors = {e["file"]: e["code"] for e in mine["errors"]}
        assert errors == {
            n: c for n, c in codes.items() if c and n != "notes.pdf" and n != "bomb.dcm"
        }
        assert mine["duplicates_skipped"] == 1  # the identical copy: sent once
        if strict:
            assert code == 1
            assert mine["status"] == "rejected"
            assert gw.sent() == []
            assert orthanc.sop_instance_uids(study.uid) == set()
        else:
            assert code == 1  # the bomb's own study is rejected; 6 where that is all
            assert mine["status"] == "partial"
            assert mine["instances"] == 5
            assert mine["delivery"]["status"] == "delivered"
            assert mine["delivery"]["confirmed"] == 5
            held_bytes(orthanc, study, held)

    def test_exit_code_six_for_a_partial_study(
        self, make_gateway: Any, orthanc: OrthancServer, tmp_path: Path
    ) -> None:
        gw = make_gateway()
        good = make_study(3, rows=32, columns=32)
        cut = unusual.make_truncated(good.files[2], keep=len(good.files[2]) // 2)
        study = Study(good.uid, [good.files[0], good.files[1], cut], ["a.dcm", "b.dcm", "c.dcm"])
        write_files(tmp_path / "in", study)
        code, summary = run_cli(gw, tmp_path / "state", str(tmp_path / "in"))
        assert code == summary["exit_code"] == 6
        [mine] = summary["studies"]
        assert mine["status"] == "partial"
        assert [(e["file"], e["code"]) for e in mine["errors"]] == [("c.dcm", "dicom_truncated")]
        assert summary["totals"]["instances"] == summary["totals"]["pacs_confirmed"] == 2
        held_bytes(orthanc, study, {0, 1})


class TestContentTrueReceipts:
    def test_a_second_instance_with_the_same_uid_and_other_bytes_is_refused(
        self, make_gateway: Any, orthanc: OrthancServer
    ) -> None:
        gw = make_gateway()
        api = Api(gw.base)
        first = make_study(1, rows=32, columns=32)
        a = first.files[0]
        delivered = api.wait(_complete(api, first))
        assert delivered["status"] == "delivered"
        b = synth.make_instance(
            study_uid=first.uid,
            series_uid=read_uid(a, "SeriesInstanceUID"),
            sop_uid=read_uid(a, "SOPInstanceUID"),
            rows=32,
            columns=32,
            seed=5,
        )
        other = synth.make_instance(
            study_uid=first.uid, series_uid=new_uid(), sop_uid=new_uid(), rows=32, columns=32
        )
        second = Study(first.uid, [b, other], ["b.dcm", "other.dcm"])
        upload_id = api.send(second)
        answer = api.complete(upload_id)
        assert answer.status_code == 202, answer.text
        files = answer.json()["files"]
        assert files[0]["error"]["code"] == "sop_instance_conflict"
        assert delivered["id"] in files[0]["error"]["message"]  # the same user's upload
        assert files[1]["error"] is None
        body = api.wait(upload_id)
        assert body["status"] == "delivered"
        assert body["forwarding"]["confirmed"] == 1
        # The PACS still holds A; B was never sent.
        assert orthanc.file_by_sop_uid(read_uid(a, "SOPInstanceUID")) == a
        assert read_uid(a, "SOPInstanceUID") in gw.sent()
        assert gw.sent().count(read_uid(a, "SOPInstanceUID")) == 1
        # Another user is told of the conflict, not of the other upload.
        other_user = Api(gw.base, "clinician2")
        third = Study(first.uid, [b, other], ["b.dcm", "other.dcm"])
        answer = other_user.complete(other_user.send(third))
        refused = answer.json()["files"][0]["error"]
        assert refused["code"] == "sop_instance_conflict"
        assert delivered["id"] not in refused["message"]

    def test_orthanc_holding_other_bytes_is_reported_and_not_delivered(
        self, make_gateway: Any, orthanc: OrthancServer
    ) -> None:
        gw = make_gateway()
        api = Api(gw.base)
        study = make_study(2, rows=32, columns=32)
        a = study.files[0]
        b = synth.make_instance(
            study_uid=study.uid,
            series_uid=read_uid(a, "SeriesInstanceUID"),
            sop_uid=read_uid(a, "SOPInstanceUID"),
            rows=32,
            columns=32,
            seed=9,
        )
        with orthanc.client() as rest:  # put there directly, not through the gateway
            assert rest.post("/instances", content=b).status_code == 200
        body = api.wait(_complete(api, study))
        assert body["status"] == "failed", body
        files = {f["index"]: f for f in body["files"]}
        assert files[0]["forward_status"] == "failed"
        assert files[0]["forward_error"].startswith("content_mismatch")
        assert files[1]["forward_status"] == "confirmed"
        assert (body["forwarding"]["confirmed"], body["forwarding"]["failed"]) == (1, 1)
        assert orthanc.file_by_sop_uid(read_uid(a, "SOPInstanceUID")) == b

    def test_wado_content_verification_for_any_dicomweb_pacs(
        self, make_gateway: Any, orthanc: OrthancServer
    ) -> None:
        gw = make_gateway(RELAYPACS_PACS_PROFILE="generic", RELAYPACS_PACS_VERIFY="content")
        api = Api(gw.base)
        study = make_study(2, rows=32, columns=32)
        a = study.files[1]
        b = synth.make_instance(
            study_uid=study.uid,
            series_uid=read_uid(a, "SeriesInstanceUID"),
            sop_uid=read_uid(a, "SOPInstanceUID"),
            rows=32,
            columns=32,
            seed=11,
        )
        with orthanc.client() as rest:
            assert rest.post("/instances", content=b).status_code == 200
        body = api.wait(_complete(api, study))
        assert body["status"] == "failed", body
        files = {f["index"]: f for f in body["files"]}
        assert files[1]["forward_error"].startswith("content_mismatch")
        assert files[0]["forward_status"] == "confirmed"
        wado = [r for r in gw.proxy.records if r.method == "GET" and "/series/" in r.path]
        assert len(wado) == 2  # every instance retrieved once


def _complete(api: Api, study: Study) -> str:
    upload_id = api.send(study)
    answer = api.complete(upload_id)
    assert answer.status_code == 202, answer.text
    return upload_id


class TestIdempotentCompletion:
    def test_concurrent_completes_verify_every_instance_once(
        self, make_gateway: Any, orthanc: OrthancServer, database: dict[str, str]
    ) -> None:
        gw = make_gateway(**database)
        api, again = Api(gw.base), Api(gw.base)
        study = make_study(30, rows=64, columns=64)
        upload_id = api.send(study)
        answers: list[httpx.Response] = []
        barrier = threading.Barrier(2)

        def complete(client: Api) -> None:
            barrier.wait()
            answers.append(client.complete(upload_id))

        threads = [threading.Thread(target=complete, args=(c,)) for c in (api, again)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
        body = api.wait(upload_id)
        assert body["status"] == "delivered"
        assert body["forwarding"]["confirmed"] == 30
        assert all(f["forward_status"] == "confirmed" for f in body["files"])
        sent = gw.sent()
        assert len(sent) == len(set(sent)) == 30  # the job ran once
        # A complete resent after delivery answers the same and changes nothing.
        late = api.complete(upload_id)
        assert late.status_code == 202
        assert late.json()["status"] == "delivered"
        time.sleep(0.5)
        assert api.get(upload_id).json()["forwarding"] == body["forwarding"]
        assert len(gw.sent()) == 30
        held_bytes(orthanc, study, set(range(30)))

    def test_two_clis_on_one_study(
        self, make_gateway: Any, orthanc: OrthancServer, database: dict[str, str], tmp_path: Path
    ) -> None:
        gw = make_gateway(**database)
        study = make_study(40, rows=64, columns=64)
        write_files(tmp_path / "in", study)
        results: list[tuple[int, dict[str, Any]]] = []

        def run(number: int) -> None:
            results.append(run_cli(gw, tmp_path / f"state{number}", str(tmp_path / "in")))

        threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for code, summary in results:
            assert code == 0, summary
            [mine] = summary["studies"]
            assert mine["delivery"]["status"] == "delivered", mine
            assert mine["delivery"]["confirmed"] == 40
        sent = gw.sent()
        assert len(sent) == len(set(sent)) == 40
        held_bytes(orthanc, study, set(range(40)))

    def test_two_users_same_study_each_their_own_receipt_sent_once(
        self, make_gateway: Any, orthanc: OrthancServer
    ) -> None:
        gw = make_gateway()
        first, second = Api(gw.base), Api(gw.base, "clinician2")
        study = make_study(5, rows=32, columns=32)
        one = first.wait(_complete(first, study))
        two_id = _complete(second, study)
        two = second.wait(two_id)
        assert one["status"] == two["status"] == "delivered"
        assert one["id"] != two["id"]
        assert two["forwarding"]["confirmed"] == 5
        # The bytes went to the PACS once; the second upload was verified, not sent again.
        assert len(gw.sent()) == 5
        # Neither sees the other's upload.
        assert second.get(one["id"]).status_code == 404
        assert first.get(two_id).status_code == 404
        assert one["id"] not in json.dumps(two)
        held_bytes(orthanc, study, set(range(5)))
