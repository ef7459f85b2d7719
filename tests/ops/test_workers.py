"""`relaypacs serve --workers N`: refused on SQLite; on PostgreSQL N processes share one port,
and any worker's /metrics adds up what all of them counted."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.api.uploading import content_digest, make_study
from tests.gateway import create_user, gateway_env, relaypacs_command
from tests.ops.conftest import metric_value
from tests.phiscan import register_server_log
from tests.servers import free_port

PASSWORD = "workers-test-password"
CHUNK = 256 * 1024


def test_sqlite_refuses_several_workers_with_a_clear_message(tmp_path: Path) -> None:
    completed = subprocess.run(
        [*relaypacs_command(), "serve", "--workers", "2", "--port", str(free_port())],
        env=gateway_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "--workers needs PostgreSQL" in completed.stderr


@contextlib.contextmanager
def workers_gateway(data_dir: Path, env: dict[str, str], workers: int) -> Iterator[str]:
    port = free_port()
    log = data_dir.parent / f"workers-{port}.log"
    register_server_log(log)
    data_dir.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*relaypacs_command(), "serve", "--port", str(port), "--workers", str(workers)],
            env=gateway_env(data_dir, env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_workers_share_the_port_and_the_metrics(tmp_path: Path, postgres_url: str) -> None:
    data_dir = tmp_path / "data"
    env = {
        "RELAYPACS_DATABASE_URL": postgres_url,
        "RELAYPACS_AUTO_MIGRATE": "false",
        "RELAYPACS_SECRET_KEY": "workers-test-signing-key-" + "w" * 32,
        "RELAYPACS_TOTP_REQUIRED_ROLES": "[]",
        "RELAYPACS_CHUNK_SIZE": str(CHUNK),
        "RELAYPACS_DICOM_WORKERS": "1",
    }
    username = f"clin{time.time_ns() % 10**9}"
    create_user(data_dir, username, PASSWORD, env=env)
    study = make_study(2, rows=400, columns=400)
    with workers_gateway(data_dir, env, workers=2) as base:
        for _ in range(40):  # new connections: the kernel spreads them over the workers
            assert httpx.get(f"{base}/health/live", timeout=5).status_code == 200
        with httpx.Client(base_url=f"{base}/api/v1", timeout=30) as api:
            login = api.post("/auth/login", json={"username": username, "password": PASSWORD})
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            upload = api.post("/uploads", json=study.manifest(), headers=headers)
            assert upload.status_code == 201, upload.text
            upload_id = upload.json()["id"]
            chunks = 0
            for file_index, content in enumerate(study.files):
                for chunk_index in range(0, len(content), CHUNK):
                    data = content[chunk_index : chunk_index + CHUNK]
                    answer = api.put(
                        f"/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index // CHUNK}",
                        content=data,
                        headers={**headers, "Content-Digest": content_digest(data)},
                    )
                    assert answer.status_code == 200, answer.text
                    chunks += 1
            done = api.post(f"/uploads/{upload_id}/complete", headers=headers)
            assert done.status_code == 202, done.text
        exposition = httpx.get(f"{base}/metrics", timeout=10).text
        metric_files = list((data_dir / "metrics").glob("*.db"))
    pids = {re.sub(r"\D", "", f.stem.rsplit("_", 1)[-1]) for f in metric_files}
    assert len(pids) >= 2, metric_files  # more than one process counted
    assert (
        metric_value(
            exposition,
            "relaypacs_http_request_duration_seconds_count",
            route="/health/live",
            status="200",
        )
        == 40
    )
    assert metric_value(exposition, "relaypacs_upload_chunks_total", outcome="stored") == chunks
    assert metric_value(exposition, "relaypacs_upload_files_total", outcome="accepted") == 2
    assert metric_value(exposition, "relaypacs_uploads", status="validated") >= 1
    assert upload_id not in exposition
