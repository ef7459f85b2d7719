"""`relaypacs serve --workers N`: refused on SQLite; on PostgreSQL N processes share one port,
and any worker's /metrics adds up what all of them counted."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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


def _proc_stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    return int(_proc_stat(pid)[21]) * os.sysconf("SC_PAGE_SIZE")


def _start_time(pid: int) -> float:
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + int(_proc_stat(pid)[19]) / os.sysconf("SC_CLK_TCK")


def _registered(data_dir: Path) -> list[int]:
    directory = data_dir / "metrics" / "processes"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_process_metrics_add_up_the_supervisor_and_every_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    """prometheus-client's multiprocess mode has no process metrics: the gateway's collector
    reads every process of the gateway (the supervisor `serve` runs and its workers) and adds
    them up; checked against /proc, read by the test itself."""
    data_dir = tmp_path / "data"
    env = {
        "RELAYPACS_DATABASE_URL": postgres_url,
        "RELAYPACS_AUTO_MIGRATE": "false",
        "RELAYPACS_SECRET_KEY": "workers-test-signing-key-" + "w" * 32,
        "RELAYPACS_DICOM_WORKERS": "1",
    }
    create_user(data_dir, f"clin{time.time_ns() % 10**9}", PASSWORD, env=env)
    with workers_gateway(data_dir, env, workers=2) as base:
        # Ready means one worker answers; the other may still be starting.
        deadline = time.monotonic() + 60
        while len(registered := _registered(data_dir)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(registered) == 3, registered  # the supervisor and two workers
        parents = {pid: int(_proc_stat(pid)[1]) for pid in registered}
        (supervisor,) = [pid for pid in registered if parents[pid] not in registered]
        assert [parents[pid] for pid in registered if pid != supervisor] == [supervisor] * 2

        cpu_before = sum(_cpu_seconds(pid) for pid in registered)
        exposition = httpx.get(f"{base}/metrics", timeout=10).text
        cpu_after = sum(_cpu_seconds(pid) for pid in registered)
        each_rss = [_rss_bytes(pid) for pid in registered]
        rss = sum(each_rss)
        fds = sum(len(list(Path(f"/proc/{pid}/fd").iterdir())) for pid in registered)
        oldest = min(_start_time(pid) for pid in registered)

    # stopped (SIGTERM): every process took its registration back
    assert _registered(data_dir) == []
    assert metric_value(exposition, "relaypacs_processes") == 3
    assert cpu_before <= metric_value(exposition, "process_cpu_seconds_total") <= cpu_after
    # Memory and descriptors move a little between the scrape and the test's reading.
    reported_rss = metric_value(exposition, "process_resident_memory_bytes")
    assert 0.8 * rss <= reported_rss <= 1.25 * rss
    assert reported_rss > 1.5 * max(each_rss)  # more than any one process's
    reported_fds = metric_value(exposition, "process_open_fds")
    assert 0.8 * fds <= reported_fds <= 1.25 * fds
    assert metric_value(exposition, "process_start_time_seconds") == pytest.approx(oldest, abs=0.02)
    assert metric_value(exposition, "process_max_fds") > 0
    # one family each, not one series per process
    assert exposition.count("\nprocess_resident_memory_bytes ") == 1
