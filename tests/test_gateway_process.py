"""The real `relaypacs serve` process: first start, refusal before the body, SIGKILL mid-upload."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.api.uploading import content_md5, make_study
from tests.gateway import create_user, gateway_env, relaypacs_command, run_gateway
from tests.phiscan import record_server_output, register_server_log
from tests.servers import free_port

CHUNK = 128 * 1024
PASSWORD = "a long test password"


def start_server(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = gateway_env(data_dir, {"RELAYPACS_CHUNK_SIZE": str(CHUNK)})
    register_server_log(log)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*relaypacs_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(log.read_text())


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    create_user(data, "clinician1", PASSWORD)
    return data


def login(base: str) -> dict[str, str]:
    response = httpx.post(
        f"{base}/api/v1/auth/login", json={"username": "clinician1", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


class TestFirstStart:
    def test_prints_a_random_admin_password_once(self, tmp_path: Path) -> None:
        data, log = tmp_path / "data", tmp_path / "gateway.log"
        with run_gateway(data, log_path=log) as base:
            match = re.search(r"password: (\S+)", log.read_text())
            assert match is not None
            response = httpx.post(
                f"{base}/api/v1/auth/login",
                json={"username": "admin", "password": match.group(1)},
            )
            assert response.status_code == 200
        with run_gateway(data, log_path=log):
            pass
        assert len(re.findall(r"password: ", log.read_text())) == 1

    def test_bad_configuration_stops_with_a_clear_message(self, tmp_path: Path) -> None:
        completed = subprocess.run(
            [*relaypacs_command(), "serve"],
            env=gateway_env(tmp_path, {"RELAYPACS_CHUNK_SIZE": "12"}),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        record_server_output("serve-bad-configuration", completed.stdout + completed.stderr)
        assert completed.returncode == 2
        assert "RELAYPACS_CHUNK_SIZE" in completed.stderr
        assert "Traceback" not in completed.stderr


class TestCommitBeforeAnswer:
    def test_a_created_upload_is_there_for_the_next_request(self, server_dir: Path) -> None:
        with run_gateway(server_dir) as base, httpx.Client(base_url=base) as client:
            client.headers.update(login(base))
            for _ in range(30):
                study = make_study(1)
                upload = client.post("/api/v1/uploads", json=study.manifest())
                assert upload.status_code == 201
                chunk = client.put(
                    f"/api/v1/uploads/{upload.json()['id']}/files/0/chunks/0",
                    content=study.files[0],
                    headers={"Content-MD5": content_md5(study.files[0])},
                )
                assert chunk.status_code == 200, chunk.text


class TestOversizedChunk:
    def test_refused_with_413_before_the_body_is_sent(self, server_dir: Path) -> None:
        with run_gateway(server_dir, {"RELAYPACS_CHUNK_SIZE": str(CHUNK)}) as base:
            headers = login(base)
            study = make_study(1)
            upload = httpx.post(
                f"{base}/api/v1/uploads", json=study.manifest(), headers=headers
            ).json()
            port = int(base.rsplit(":", 1)[1])
            request = (
                f"PUT /api/v1/uploads/{upload['id']}/files/0/chunks/0 HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: {headers['Authorization']}\r\n"
                f"Content-MD5: {content_md5(b'x')}\r\nContent-Length: 5000000000\r\n\r\n"
            )
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request.encode())  # headers only: no byte of the body
                answer = ""
                while "chunk_too_large" not in answer and (data := sock.recv(65536)):
                    answer += data.decode(errors="replace")
            assert answer.startswith("HTTP/1.1 413"), answer
            assert "chunk_too_large" in answer


class TestServerKilledMidUpload:
    async def test_restarted_server_resumes_and_loses_no_acknowledged_chunk(
        self, server_dir: Path, tmp_path: Path
    ) -> None:
        study = make_study(24, rows=512, columns=512)  # 24 files x 4 chunks of 128 KiB
        jobs = [
            (f, c, data[c * CHUNK : (c + 1) * CHUNK])
            for f, data in enumerate(study.files)
            for c in range(-(-len(data) // CHUNK))
        ]
        port, log = free_port(), tmp_path / "gateway.log"
        base = f"http://127.0.0.1:{port}"
        server = start_server(server_dir, port, log)
        acknowledged: set[tuple[int, int]] = set()
        try:
            headers = login(base)
            upload_id = httpx.post(
                f"{base}/api/v1/uploads", json=study.manifest(), headers=headers
            ).json()["id"]

            async def send(client: httpx.AsyncClient, job: tuple[int, int, bytes]) -> None:
                f, c, chunk = job
                url = f"{base}/api/v1/uploads/{upload_id}/files/{f}/chunks/{c}"
                try:
                    response = await client.put(
                        url, content=chunk, headers={**headers, "Content-MD5": content_md5(chunk)}
                    )
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    acknowledged.add((f, c))
                    if len(acknowledged) == len(jobs) // 2:
                        server.send_signal(signal.SIGKILL)

            async with httpx.AsyncClient(timeout=30) as client:
                queue = list(jobs)

                async def worker() -> None:
                    while queue:
                        await send(client, queue.pop())

                await asyncio.gather(*(worker() for _ in range(6)))
        finally:
            server.kill()
            server.wait()
        assert len(jobs) // 2 <= len(acknowledged) < len(jobs)

        server = start_server(server_dir, port, log)
        try:
            headers = login(base)
            status = httpx.get(f"{base}/api/v1/uploads/{upload_id}", headers=headers).json()
            missing = {(f["index"], c) for f in status["files"] for c in f["missing_chunks"]}
            assert not (missing & acknowledged), "an acknowledged chunk was lost"
            with httpx.Client(timeout=30) as sync_client:
                for f, c, chunk in jobs:
                    if (f, c) in missing:
                        response = sync_client.put(
                            f"{base}/api/v1/uploads/{upload_id}/files/{f}/chunks/{c}",
                            content=chunk,
                            headers={**headers, "Content-MD5": content_md5(chunk)},
                        )
                        assert response.status_code == 200, response.text
                done = sync_client.post(
                    f"{base}/api/v1/uploads/{upload_id}/complete", headers=headers
                )
            assert done.status_code == 202, done.text  # every file's SHA-256 matched
            assert done.json()["instance_count"] == len(study.files)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

        # The stored bytes, read back from the store, are exactly the study's files.
        root = server_dir / "objects" / "uploads" / upload_id
        for index, data in enumerate(study.files):
            parts = sorted(root.glob(f"{index}-*"), key=lambda p: int(p.name.split("-")[1]))
            stored = b"".join(p.read_bytes() for p in parts)
            assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
