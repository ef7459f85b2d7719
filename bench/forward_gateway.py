"""One gateway run of the forwarding benchmark (bench/forward.py, bench/netforward.py): a fresh
`relaypacs serve` forwarding to the given Orthanc, `relaypacs upload -v --json` uploading the
study, the light view polled until `delivered`; the gateway's time stamps, CPU seconds and RSS
over the forwarding phase (see bench/forward.py for what each figure means)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

from bench.gateway import (
    PASSWORD,
    REPO,
    USERNAME,
    _check_report,
    _upload_report,
    client_env,
    server_env,
    server_pid,
)
from bench.procs import children_cpu, process_cpu, tree_cpu
from bench.rss import RssSampler, reset_hwm

if TYPE_CHECKING:
    from tests.pacs import OrthancServer

# `relaypacs upload --wait` polls once a second at most; the time is taken from the gateway's own
# time stamps (completed_at -> delivered_at), so polling faster would only add load (each poll
# costs the gateway a few ms of CPU, on a machine Orthanc already keeps busy).
POLL_SECONDS = 0.25
UID_HEAD = 64 << 10  # the UIDs are in the first bytes of each file

# `relaypacs upload -v`: "2026-01-01 12:00:00,123 httpx HTTP Request: POST
# http://127.0.0.1:PORT/api/v1/uploads/<id>/complete "HTTP/1.1 202 Accepted""
_COMPLETE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) httpx HTTP Request: POST \S+/uploads/"
    rb"([0-9a-fA-F-]{36})/complete \"HTTP/[\d.]+ (\d{3})"
)


@dataclass(frozen=True)
class StudyUids:
    study: str
    instances: frozenset[str]


def study_uids(files: Sequence[Path]) -> StudyUids:
    """The Study Instance UID and every SOP Instance UID of the study's files."""
    from tests.pacs import dicom_uids

    studies: set[str] = set()
    instances: set[str] = set()
    for path in files:
        with path.open("rb") as handle:
            uids = dicom_uids(handle.read(UID_HEAD))
        if not uids.complete:
            raise RuntimeError(f"{path}: no DICOM UIDs in its first {UID_HEAD} bytes")
        assert uids.study_instance_uid is not None
        assert uids.sop_instance_uid is not None
        studies.add(uids.study_instance_uid)
        instances.add(uids.sop_instance_uid)
    if len(studies) != 1:
        raise RuntimeError(f"the study's files hold {len(studies)} Study Instance UIDs, not 1")
    if len(instances) != len(files):
        raise RuntimeError(f"{len(files)} files but {len(instances)} SOP Instance UIDs")
    return StudyUids(studies.pop(), frozenset(instances))


def missing(expected: frozenset[str], found: set[str]) -> str | None:
    lost = expected - found
    if not lost:
        return None
    return f"{len(lost)} of {len(expected)} instances missing (e.g. {sorted(lost)[0]})"


def orthanc_pid(orthanc: OrthancServer) -> int | None:
    return orthanc.process.pid if orthanc.process is not None else None


@dataclass
class _Complete:
    """What the CLI's stderr told about `complete` (read by a thread as the CLI runs)."""

    seen: threading.Event = field(default_factory=threading.Event)
    upload_id: str | None = None
    answered_at: float | None = None  # epoch seconds, the CLI's time stamp (ms, truncated)
    read_at: float | None = None  # epoch seconds when this process read the line
    status: int | None = None


def _watch_stderr(stream: IO[bytes], sink: IO[bytes], found: _Complete) -> None:
    for line in iter(stream.readline, b""):
        sink.write(line)
        match = _COMPLETE.match(line)
        if match and match.group(4) in (b"200", b"202") and not found.seen.is_set():
            found.read_at = time.time()
            stamp = time.mktime(time.strptime(match.group(1).decode(), "%Y-%m-%d %H:%M:%S"))
            found.answered_at = stamp + int(match.group(2)) / 1000
            found.upload_id = match.group(3).decode()
            found.status = int(match.group(4))
            found.seen.set()
    sink.flush()


@dataclass
class GatewayRun:
    seconds: float = 0.0
    server_seconds: float | None = None  # completed_at -> delivered_at, the gateway's clock
    polls: int = 0
    poll_round_trips: list[float] = field(default_factory=list)  # seconds, each poll
    complete_read_lag: float = 0.0  # between the CLI's time stamp and this process reading it
    peak_main: int = 0
    peak_tree: int = 0
    peak_pss: int = 0
    children: int = 0
    gateway_cpu: float = 0.0
    orthanc_cpu: float = 0.0
    attempts: int | None = None
    ingest_seconds: float = 0.0  # CLI start to the `complete` answer
    poll_cpu: float = 0.0  # the gateway's CPU seconds per poll, measured once idle
    rss_at_complete: int = 0  # main process, when `complete` answered
    rss_tree_at_complete: int = 0  # incl. workers
    # End to end: the upload's created_at (init, just before the first chunk) to its
    # delivered_at, both the gateway's clock ("first byte -> PACS confirmed").
    e2e_server_seconds: float | None = None
    wall_seconds: float = 0.0  # the CLI's start to the first poll answering `delivered`
    # Every process's CPU seconds over that wall time: the gateway (incl. its validation
    # workers, live or exited), the CLI (and its children), Orthanc. The loopback floor is
    # their sum over the machine's cores.
    cpu_gateway_total: float = 0.0
    cpu_cli: float = 0.0
    cpu_orthanc_total: float = 0.0
    # The timeline's `validated` step: with the pipelined relay, how many instances were queued
    # for the PACS while uploading ("...; N instances queued for the PACS while uploading").
    validated_step: str | None = None


def _step_detail(api: httpx.Client, upload_id: str | None, name: str) -> str | None:
    response = api.get(f"/api/v1/uploads/{upload_id}/timeline")
    if response.status_code != 200:
        return None
    details = [s.get("detail") for s in response.json().get("steps", []) if s.get("step") == name]
    return str(details[-1]) if details else None


def _poll_cost(api: httpx.Client, path: str, pid: int, polls: int = 10) -> float:
    """CPU seconds the gateway's main process spends answering one poll (once it is idle):
    what the benchmark's own polling costs the gateway while it forwards."""
    api.get(path).raise_for_status()
    before = process_cpu(pid)
    for _ in range(polls):
        api.get(path).raise_for_status()
    return (process_cpu(pid) - before) / polls


def _login(client: httpx.Client) -> None:
    response = client.post("/api/v1/auth/login", json={"username": USERNAME, "password": PASSWORD})
    response.raise_for_status()
    client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def gateway_run(
    files: Sequence[Path],
    study_dir: Path,
    total_bytes: int,
    uids: StudyUids,
    orthanc: OrthancServer,
    run_dir: Path,
    logs: Path,
    name: str,
    *,
    workers: int | None,
    parallel: int,
    poll_seconds: float = POLL_SECONDS,
    pacs_verify: str | None = None,
    pipeline: bool = False,
    pacs_url: str | None = None,
    uplink: Callable[[str], AbstractContextManager[str]] | None = None,
) -> GatewayRun:
    """One upload then forward (or pipelined). `pacs_url`: the gateway's way to Orthanc (default
    its DICOMweb root); `uplink`: given the gateway's URL, a context yielding the URL the CLI
    uploads to (bench.netforward: a proxy behind a shaped link). The benchmark's own polls go
    straight to the gateway."""
    from tests.gateway import create_user, relaypacs_command, run_gateway

    data_dir, state_dir = run_dir / "data", run_dir / "client-state"
    data_dir.mkdir(parents=True)
    state_dir.mkdir(parents=True, mode=0o700)
    username, password = orthanc.auth
    env = {
        **server_env(workers),
        "RELAYPACS_PACS_URL": pacs_url or orthanc.dicomweb_url,
        "RELAYPACS_PACS_USERNAME": username,
        "RELAYPACS_PACS_PASSWORD": password,
        "RELAYPACS_PACS_PROFILE": "orthanc",
    }
    if pacs_verify is not None:
        env["RELAYPACS_PACS_VERIFY"] = pacs_verify
    env["RELAYPACS_PIPELINE"] = "true" if pipeline else "false"
    log_path = logs / f"{name}.log"
    log_path.unlink(missing_ok=True)
    create_user(data_dir, USERNAME, PASSWORD, env=env)
    result = GatewayRun()
    timeout = 120.0 + 0.25 * len(files)
    with (
        run_gateway(data_dir, env, log_path=log_path) as base_url,
        (uplink or contextlib.nullcontext)(base_url) as cli_url,
        httpx.Client(base_url=base_url, timeout=60.0) as api,
        (logs / f"{name}-upload.stderr").open("wb") as err_log,
        (logs / f"{name}-upload.stdout").open("w+b") as out_log,
    ):
        pid = server_pid(base_url)
        _login(api)
        found = _Complete()
        cpu_start = (tree_cpu(pid), children_cpu(), process_cpu(orthanc_pid(orthanc)))
        started = time.time()
        cli = subprocess.Popen(
            [
                *relaypacs_command(),
                "upload",
                str(study_dir),
                "--json",
                "-v",
                "--parallel",
                str(parallel),
            ],
            env=client_env(state_dir, cli_url),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out_log,
            stderr=subprocess.PIPE,
        )
        assert cli.stderr is not None
        reader = threading.Thread(
            target=_watch_stderr, args=(cli.stderr, err_log, found), daemon=True
        )
        reader.start()
        sampler: RssSampler | None = None
        try:
            while not found.seen.wait(0.01):
                if cli.poll() is not None:
                    reader.join(5)
                    break
                if time.time() - started > 3600:
                    raise TimeoutError("the upload did not complete within an hour")
            if not found.seen.is_set():
                out_log.seek(0)
                stdout = out_log.read().decode(errors="replace")
                raise RuntimeError(
                    f"`relaypacs upload` exited {cli.returncode} without a `complete` answer "
                    f"in its log: {stdout.strip()[-600:]}"
                )
            # The forwarding phase starts: the upload is queued and the worker was woken.
            exact_hwm = reset_hwm(pid)
            sampler = RssSampler(pid)
            sampler.sample()  # what the ingest left: the phase starts from there
            result.rss_at_complete, result.rss_tree_at_complete = (
                sampler.peak_main,
                sampler.peak_tree,
            )
            sampler.start()
            cpu_gateway, cpu_orthanc = sampler.cpu_seconds(), process_cpu(orthanc_pid(orthanc))
            assert found.answered_at is not None
            assert found.read_at is not None
            t0 = found.answered_at
            result.complete_read_lag = found.read_at - t0
            result.ingest_seconds = t0 - started
            doc: dict[str, Any] = {}
            while True:
                asked = time.time()
                response = api.get(f"/api/v1/uploads/{found.upload_id}?files=false")
                now = time.time()
                result.polls += 1
                result.poll_round_trips.append(now - asked)
                response.raise_for_status()
                doc = response.json()
                status = doc.get("status")
                if status == "delivered":
                    result.seconds = now - t0
                    result.wall_seconds = now - started
                    result.cpu_gateway_total = tree_cpu(pid) - cpu_start[0]
                    result.cpu_orthanc_total = process_cpu(orthanc_pid(orthanc)) - cpu_start[2]
                    break
                if status in ("failed", "rejected", "cancelled"):
                    raise RuntimeError(f"the upload became {status}: {doc.get('forwarding')}")
                if now - t0 > timeout:
                    raise TimeoutError(
                        f"not delivered {timeout:.0f} s after complete (status {status}, "
                        f"forwarding {doc.get('forwarding')})"
                    )
                # A pause between one answer and the next request: a slow answer (a busy
                # gateway) is not followed by another one at once.
                time.sleep(poll_seconds)
            sampler.sample()
            result.gateway_cpu = sampler.cpu_seconds() - cpu_gateway
            result.orthanc_cpu = process_cpu(orthanc_pid(orthanc)) - cpu_orthanc
            result.poll_cpu = _poll_cost(api, f"/api/v1/uploads/{found.upload_id}?files=false", pid)
            result.validated_step = _step_detail(api, found.upload_id, "validated")
        finally:
            if sampler is not None:
                sampler.stop()
            try:
                cli.wait(timeout=300)
            except subprocess.TimeoutExpired:
                cli.kill()
                cli.wait()
            result.cpu_cli = children_cpu() - cpu_start[1]
            reader.join(10)
        forwarding = doc.get("forwarding") or {}
        result.attempts = forwarding.get("attempts")
        completed, delivered = (
            _parse_time(doc.get("completed_at")),
            _parse_time(forwarding.get("delivered_at")),
        )
        if completed is not None and delivered is not None:
            result.server_seconds = delivered - completed
        created = _parse_time(doc.get("created_at"))
        if created is not None and delivered is not None:
            result.e2e_server_seconds = delivered - created
        assert sampler is not None
        # VmHWM covers the forwarding phase only if it could be reset when `complete` answered.
        result.peak_main = max((sampler.hwm_main or 0) if exact_hwm else 0, sampler.peak_main)
        result.peak_tree = sampler.peak_tree
        result.peak_pss = sampler.peak_pss_tree
        result.children = sampler.max_descendants
        out_log.seek(0)
        stdout = out_log.read().decode(errors="replace")
    if cli.returncode != 0:
        raise RuntimeError(f"`relaypacs upload` exited {cli.returncode}: {stdout[-600:]}")
    problem = _check_report(_upload_report(stdout), len(files), total_bytes)
    if problem:
        raise RuntimeError(f"upload not complete: {problem}")
    problem = missing(uids.instances, orthanc.sop_instance_uids(uids.study))
    if problem:
        raise RuntimeError(f"delivered, but Orthanc does not list every instance: {problem}")
    return result
