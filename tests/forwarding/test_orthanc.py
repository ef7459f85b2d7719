"""Forwarding to a real Orthanc (DICOMweb plugin) from real gateway processes."""

from __future__ import annotations

import base64
import hashlib
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.uploading import Study, make_study, read_uid
from tests.conftest import POSTGRES_ADMIN_URL, _psql
from tests.gateway import create_user, gateway_env, relaypacs_command
from tests.pacs import OrthancServer, RecordingProxy, run_orthanc
from tests.phiscan import register_server_log
from tests.servers import free_port

PASSWORD = "forwarding-e2e-password"
CHUNK = 256 * 1024


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


@dataclass
class GatewayProcess:
    data_dir: Path
    env: dict[str, str]
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def start(self) -> None:
        self.port = self.port or free_port()
        register_server_log(self.log)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*relaypacs_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=gateway_env(self.data_dir, self.env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError(self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def gateway(
    tmp_path: Path, name: str, pacs_url: str, orthanc: OrthancServer, **env: str
) -> GatewayProcess:
    data = tmp_path / "data"
    settings = {
        "RELAYPACS_PACS_URL": pacs_url,
        "RELAYPACS_PACS_USERNAME": orthanc.auth[0],
        "RELAYPACS_PACS_PASSWORD": orthanc.auth[1],
        "RELAYPACS_PACS_PROFILE": "orthanc",
        "RELAYPACS_CHUNK_SIZE": str(CHUNK),
        "RELAYPACS_SECRET_KEY": "e2e-shared-signing-key-" + "k" * 32,
        "RELAYPACS_FORWARD_RETRY_DELAYS": "[0.2, 0.4, 0.8]",
        "RELAYPACS_FORWARD_RETRY_INTERVAL": "1.0",
        "RELAYPACS_FORWARD_POLL_SECONDS": "0.2",
        "RELAYPACS_BREAKER_RESET_SECONDS": "3",
        **env,
    }
    return GatewayProcess(data, settings, tmp_path / f"{name}.log")


class Client:
    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=30)
        token = self.http.post(
            "/auth/login", json={"username": "clinician1", "password": PASSWORD}
        ).json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {token}"

    def upload(self, study: Study) -> str:
        manifest = study.manifest()
        upload = self.http.post("/uploads", json=manifest)
        assert upload.status_code == 201, upload.text
        upload_id: str = upload.json()["id"]
        for index, data in enumerate(study.files):
            for c in range(-(-len(data) // CHUNK)):
                chunk = data[c * CHUNK : (c + 1) * CHUNK]
                md5 = base64.b64encode(hashlib.md5(chunk).digest()).decode()
                response = self.http.put(
                    f"/uploads/{upload_id}/files/{index}/chunks/{c}",
                    content=chunk,
                    headers={"Content-MD5": md5},
                )
                assert response.status_code == 200, response.text
        done = self.http.post(f"/uploads/{upload_id}/complete")
        assert done.status_code == 202, done.text
        return upload_id

    def get(self, upload_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/uploads/{upload_id}").json()
        return body

    def wait(self, upload_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body = self.get(upload_id)
        while body["status"] not in ("delivered", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            body = self.get(upload_id)
        return body


def assert_in_orthanc(orthanc: OrthancServer, study: Study) -> None:
    """Orthanc holds every instance, byte for byte as uploaded."""
    assert orthanc.sop_instance_uids(study.uid) == {
        read_uid(f, "SOPInstanceUID") for f in study.files
    }
    for data in study.files:
        stored = orthanc.file_by_sop_uid(read_uid(data, "SOPInstanceUID"))
        assert stored is not None
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()


class TestEndToEnd:
    def test_uploaded_study_arrives_in_orthanc_byte_for_byte(
        self, tmp_path: Path, orthanc: OrthancServer
    ) -> None:
        gw = gateway(tmp_path, "gw", orthanc.dicomweb_url, orthanc)
        create_user(gw.data_dir, "clinician1", PASSWORD, env=gw.env)
        gw.start()
        try:
            client = Client(gw.base)
            study = make_study(25, rows=256, columns=256)
            body = client.wait(client.upload(study))
            assert body["status"] == "delivered", body["forwarding"]
            assert body["forwarding"]["confirmed"] == 25
            assert_in_orthanc(orthanc, study)
        finally:
            gw.stop()
        assert "pacs-password" not in gw.log.read_text()
        assert orthanc.auth[1] not in gw.log.read_text()  # credentials never logged


class TestOrthancOutages:
    def test_stopped_orthanc_queues_opens_the_breaker_and_delivers_when_back(
        self, tmp_path: Path, orthanc: OrthancServer
    ) -> None:
        gw = gateway(tmp_path, "gw", orthanc.dicomweb_url, orthanc)
        create_user(gw.data_dir, "clinician1", PASSWORD, env=gw.env)
        gw.start()
        try:
            client = Client(gw.base)
            orthanc.stop()
            studies = [make_study(4), make_study(3)]
            ids = [client.upload(s) for s in studies]
            time.sleep(6)  # 1 + 2 + 4 x 0.2 s of retries, then the breaker holds
            for upload_id in ids:
                body = client.get(upload_id)
                assert body["status"] in ("queued", "forwarding"), body["status"]
                assert body["forwarding"]["last_error"]
            assert "circuit breaker open" in gw.log.read_text()
            orthanc.start()
            for upload_id, study in zip(ids, studies, strict=True):
                body = client.wait(upload_id)
                assert body["status"] == "delivered", body["forwarding"]
                assert_in_orthanc(orthanc, study)
        finally:
            gw.stop()

    def test_frozen_orthanc_times_out_the_api_answers_and_delivery_completes(
        self, tmp_path: Path, orthanc: OrthancServer
    ) -> None:
        config = tmp_path / "relaypacs.toml"
        config.write_text(
            "[[pacs_targets]]\n"
            'name = "orthanc"\n'
            f'url = "{orthanc.dicomweb_url}"\n'
            'profile = "orthanc"\n'
            f'username = "{orthanc.auth[0]}"\n'
            f'password = "{orthanc.auth[1]}"\n'
            "read_timeout = 2.0\n"
        )
        gw = gateway(
            tmp_path, "gw", orthanc.dicomweb_url, orthanc, RELAYPACS_CONFIG_FILE=str(config)
        )
        del gw.env["RELAYPACS_PACS_URL"]
        create_user(gw.data_dir, "clinician1", PASSWORD, env=gw.env)
        gw.start()
        try:
            client = Client(gw.base)
            orthanc.freeze()
            study = make_study(3)
            upload_id = client.upload(study)
            time.sleep(3)  # the STOW request is stuck on the frozen Orthanc, then times out
            started = time.monotonic()
            assert client.http.get("/health").status_code == 200
            assert client.get(upload_id)["status"] in ("queued", "forwarding")
            assert time.monotonic() - started < 1.0
            orthanc.thaw()
            body = client.wait(upload_id)
            assert body["status"] == "delivered", body["forwarding"]
            assert body["forwarding"]["attempts"] >= 1
            assert_in_orthanc(orthanc, study)
        finally:
            orthanc.thaw()
            gw.stop()


class TestCrashes:
    def test_gateway_killed_while_forwarding_delivers_everything_after_restart(
        self, tmp_path: Path, orthanc: OrthancServer
    ) -> None:
        with RecordingProxy(orthanc.base_url) as proxy:
            # A short lease: the job of the killed process is due again after it.
            gw = gateway(
                tmp_path, "gw", proxy.dicomweb_url, orthanc, RELAYPACS_FORWARD_LEASE_SECONDS="6"
            )
            create_user(gw.data_dir, "clinician1", PASSWORD, env=gw.env)
            gw.start()
            client = Client(gw.base)
            study = make_study(60, rows=512, columns=512)
            upload_id = client.upload(study)
            proxy.wait_for(1, timeout=30)  # forwarding has started
            gw.kill()
            sent_before = len(proxy.stow_posts())
            gw.start()  # same port, data and database
            try:
                body = Client(gw.base).wait(upload_id)
                assert body["status"] == "delivered", body["forwarding"]
                assert_in_orthanc(orthanc, study)
                statistics = orthanc.client().get("/statistics").json()
                assert statistics["CountStudies"] == 1
                assert statistics["CountInstances"] == 60
                assert sent_before >= 1
            finally:
                gw.stop()


@pytest.fixture
def shared_postgres() -> Iterator[str]:
    name = f"relaypacs_two_{secrets.token_hex(4)}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://{POSTGRES_ADMIN_URL.removeprefix('postgresql://')}/{name}"
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TestTwoGateways:
    def test_two_processes_on_one_database_deliver_everything_and_send_no_batch_twice(
        self, tmp_path: Path, orthanc: OrthancServer, shared_postgres: str
    ) -> None:
        with RecordingProxy(orthanc.base_url) as proxy:
            first = gateway(
                tmp_path, "gw1", proxy.dicomweb_url, orthanc, RELAYPACS_DATABASE_URL=shared_postgres
            )
            second = gateway(
                tmp_path, "gw2", proxy.dicomweb_url, orthanc, RELAYPACS_DATABASE_URL=shared_postgres
            )
            create_user(first.data_dir, "clinician1", PASSWORD, env=first.env)
            first.start()
            second.start()
            try:
                clients = [Client(first.base), Client(second.base)]
                studies = [make_study(12) for _ in range(6)]
                ids = [clients[i % 2].upload(s) for i, s in enumerate(studies)]
                for upload_id, study in zip(ids, studies, strict=True):
                    body = clients[0].wait(upload_id)
                    assert body["status"] == "delivered", body["forwarding"]
                    assert_in_orthanc(orthanc, study)
                sent = proxy.sent_sop_instance_uids()
                assert len(sent) == 72
                assert len(set(sent)) == len(sent), "an instance was sent twice"
                both = {"gw1": first.log.read_text(), "gw2": second.log.read_text()}
                workers = [name for name, log in both.items() if "delivered: pacs confirmed" in log]
                assert workers, both
            finally:
                first.stop()
                second.stop()
