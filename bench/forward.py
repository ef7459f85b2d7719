"""Forwarding: the gateway sending an accepted study to a real Orthanc vs a direct STOW-RS client.

Per run, a fresh Orthanc 1.10 with the DICOMweb plugin (`tests.pacs.run_orthanc`: loopback port,
basic auth, its own storage under the run's scratch dir, killed and deleted afterwards), then:

- direct: `bench.stow_direct` sends the study's files to it, 10 per request, 4 in flight, then
  lists the study with QIDO-RS (rows "direct STOW" and "direct STOW + QIDO");
- gateway: `relaypacs serve` (fresh data dir, SQLite + fs store) with RELAYPACS_PACS_URL on that
  Orthanc; `relaypacs upload -v --json` uploads the study. The CLI's own log line for the
  `complete` answer (httpx logs every response; `-v` puts it on stderr with a millisecond time
  stamp) gives the upload id and the moment `complete` answered (the upload is then `queued`);
  from there `GET /api/v1/uploads/{id}?files=false` (the light view `upload --wait` polls) is
  polled every 250 ms until `delivered`; the forwarding time is the gateway's own, from the
  upload's completed_at to its delivered_at (the row "server time stamps", which the goal
  uses); the row "complete->delivered" is the client's view, with the polls' granularity.
  Peak RSS of the gateway (main process; incl. its validator
  workers) is sampled over that phase only (the main process's VmHWM is reset when `complete`
  answers). Orthanc is then asked (QIDO-RS) whether it lists every SOP Instance UID.

The two contenders alternate run by run, so load from elsewhere on the machine hits both alike.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
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

from bench import stow_direct
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
from bench.report import DIRECT, DIRECT_QIDO, GATEWAY_E2E, GATEWAY_PIPELINED, GATEWAY_SERVER
from bench.report import GATEWAY_FORWARD as GATEWAY
from bench.results import Measurement
from bench.rss import RssSampler, reset_hwm

if TYPE_CHECKING:
    from tests.pacs import OrthancServer

PER_REQUEST = 10  # instances per STOW-RS request: the gateway's default batch_instances
IN_FLIGHT = 4  # the direct client's requests in flight (the gateway: its max_in_flight, 5)
# `relaypacs upload --wait` polls once a second at most; the time is taken from the gateway's own
# time stamps (completed_at -> delivered_at), so polling faster would only add load (each poll
# costs the gateway a few ms of CPU, on a machine Orthanc already keeps busy).
POLL_SECONDS = 0.25
UID_HEAD = 64 << 10  # the UIDs are in the first bytes of each file

assert f"({PER_REQUEST}/req, {IN_FLIGHT} in flight)" in DIRECT

# `relaypacs upload -v`: "2026-01-01 12:00:00,123 httpx HTTP Request: POST
# http://127.0.0.1:PORT/api/v1/uploads/<id>/complete "HTTP/1.1 202 Accepted""
_COMPLETE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) httpx HTTP Request: POST \S+/uploads/"
    rb"([0-9a-fA-F-]{36})/complete \"HTTP/[\d.]+ (\d{3})"
)


class ForwardUnavailable(RuntimeError):
    """Orthanc (or the gateway) cannot run here."""


def check_ready() -> str:
    """The Orthanc version (`/usr/sbin/Orthanc --version`); ForwardUnavailable when missing."""
    try:
        from tests.pacs import ORTHANC_BIN, orthanc_missing_reason
    except ImportError as exc:  # pragma: no cover - the test harness is part of the repo
        raise ForwardUnavailable(f"tests.pacs does not import: {exc}") from exc
    reason = orthanc_missing_reason()
    if reason:
        raise ForwardUnavailable(reason)
    done = subprocess.run(
        [str(ORTHANC_BIN), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    first = (done.stdout.strip().splitlines() or ["?"])[0]
    return first.strip() or "Orthanc (version unknown)"


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


def _missing(expected: frozenset[str], found: set[str]) -> str | None:
    lost = expected - found
    if not lost:
        return None
    return f"{len(lost)} of {len(expected)} instances missing (e.g. {sorted(lost)[0]})"


def _pid(orthanc: OrthancServer) -> int | None:
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


def _gateway_run(
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
        cpu_start = (tree_cpu(pid), children_cpu(), process_cpu(_pid(orthanc)))
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
            cpu_gateway, cpu_orthanc = sampler.cpu_seconds(), process_cpu(_pid(orthanc))
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
                    result.cpu_orthanc_total = process_cpu(_pid(orthanc)) - cpu_start[2]
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
            result.orthanc_cpu = process_cpu(_pid(orthanc)) - cpu_orthanc
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
    problem = _missing(uids.instances, orthanc.sop_instance_uids(uids.study))
    if problem:
        raise RuntimeError(f"delivered, but Orthanc does not list every instance: {problem}")
    return result


def measure(
    files: Sequence[Path],
    study_dir: Path,
    total_bytes: int,
    scratch: Path,
    logs: Path,
    *,
    repeat: int,
    workers: int | None,
    parallel: int,
    settle: Callable[[Path], None],
    log: Callable[[str], None],
    poll_seconds: float = POLL_SECONDS,
    pacs_verify: str | None = None,
) -> list[Measurement]:
    """Direct STOW (+ QIDO) and the gateway's forwarding, alternating, `repeat` times each."""
    from tests.pacs import OrthancStartError, run_orthanc

    direct = Measurement(DIRECT, "direct", total_bytes, len(files))
    direct.note = (
        f"httpx, {PER_REQUEST} files/request read from disk, {IN_FLIGHT} in flight, "
        "first request to last answer; fresh Orthanc per run"
    )
    direct_qido = Measurement(DIRECT_QIDO, "direct", total_bytes, len(files))
    direct_qido.note = "the same plus one QIDO-RS listing of the study's instances"
    gateway = Measurement(GATEWAY, "forward", total_bytes, len(files))
    gateway.note = (
        "`complete` answered (CLI log time stamp) to the first poll answering `delivered` "
        f"(GET /api/v1/uploads/{{id}} every {poll_seconds * 1000:.0f} ms); fresh gateway "
        "and Orthanc per run; RSS over that phase only"
        + (f"; verify={pacs_verify}" if pacs_verify else "")
    )
    server = Measurement(GATEWAY_SERVER, "forward", total_bytes, len(files))
    server.note = (
        "the same runs timed by the gateway itself: the upload's completed_at to its "
        "forwarding.delivered_at (no poll granularity; the polls' load is still there)"
    )
    e2e = Measurement(GATEWAY_E2E, "forward", total_bytes, len(files))
    e2e.note = (
        "RELAYPACS_PIPELINE=false: the upload's created_at (init, before the first chunk) to its "
        "delivered_at, the gateway's clock; the same runs as the rows above"
    )
    pipelined = Measurement(GATEWAY_PIPELINED, "forward", total_bytes, len(files))
    pipelined.note = (
        "RELAYPACS_PIPELINE=true, timed the same way; its own runs (fresh gateway and Orthanc)"
    )
    rows = [direct, direct_qido, gateway, server, e2e, pipelined]
    cores = os.cpu_count() or 1

    def note(row: Measurement, key: str, value: Any) -> None:
        row.extra.setdefault(key, []).append(value)

    try:
        uids = study_uids(files)
    except (OSError, RuntimeError) as exc:
        for row in rows:
            row.error = f"cannot read the study's UIDs: {exc}"
        return rows
    logs.mkdir(parents=True, exist_ok=True)
    peak_main = peak_tree = peak_pss = children = 0

    def note_e2e(row: Measurement, g: GatewayRun) -> None:
        if g.e2e_server_seconds is not None:
            row.seconds.append(g.e2e_server_seconds)
        else:
            row.error = "no created_at / forwarding.delivered_at"
        cpu = g.cpu_gateway_total + g.cpu_cli + g.cpu_orthanc_total
        note(row, "wall_cli_start_to_delivered_seconds", g.wall_seconds)
        note(row, "cpu_floor_seconds", cpu / cores)
        note(row, "wall_over_cpu_floor", g.wall_seconds / (cpu / cores) if cpu else 0.0)
        note(row, "cpu_gateway_seconds", g.cpu_gateway_total)
        note(row, "cpu_cli_seconds", g.cpu_cli)
        note(row, "cpu_orthanc_seconds", g.cpu_orthanc_total)
        note(row, "complete_to_delivered_seconds", g.server_seconds)

    contenders = ("direct", "gateway", "pipelined")
    for i in range(repeat):
        for contender in contenders:
            if (
                (contender == "direct" and direct.error)
                or (contender == "gateway" and gateway.error)
                or (contender == "pipelined" and pipelined.error)
            ):
                continue
            run_dir = scratch / f"forward-{contender}-{i}"
            settle(run_dir)
            run_dir.mkdir(parents=True)
            log(f"    run {i + 1}/{repeat}: {contender} ...")
            try:
                with run_orthanc(run_dir / "orthanc", username="bench") as orthanc:
                    if contender == "direct":
                        cpu_before = process_cpu(_pid(orthanc))
                        d = stow_direct.send(
                            files,
                            uids.study,
                            orthanc.dicomweb_url,
                            orthanc.auth,
                            per_request=PER_REQUEST,
                            in_flight=IN_FLIGHT,
                        )
                        orthanc_cpu = process_cpu(_pid(orthanc)) - cpu_before
                        problem = (
                            f"FailedSOPSequence for {len(d.failed)} instances"
                            if d.failed
                            else _missing(uids.instances, d.stored)
                            or _missing(uids.instances, d.listed)
                        )
                        if problem:
                            raise RuntimeError(f"direct STOW-RS: {problem}")
                        direct.seconds.append(d.stow_seconds)
                        direct_qido.seconds.append(d.stow_seconds + d.qido_seconds)
                        note(direct, "stow_requests", d.requests)
                        note(direct, "client_cpu_seconds", d.client_cpu_seconds)
                        note(direct, "orthanc_cpu_seconds", orthanc_cpu)
                        note(direct_qido, "qido_seconds", d.qido_seconds)
                        note(direct_qido, "qido_requests", d.qido_requests)
                    elif contender == "pipelined":
                        g = _gateway_run(
                            files,
                            study_dir,
                            total_bytes,
                            uids,
                            orthanc,
                            run_dir,
                            logs,
                            f"forward-pipelined-{i}",
                            workers=workers,
                            parallel=parallel,
                            poll_seconds=poll_seconds,
                            pacs_verify=pacs_verify,
                            pipeline=True,
                        )
                        note_e2e(pipelined, g)
                        note(pipelined, "forward_attempts", g.attempts)
                    else:
                        g = _gateway_run(
                            files,
                            study_dir,
                            total_bytes,
                            uids,
                            orthanc,
                            run_dir,
                            logs,
                            f"forward-gateway-{i}",
                            workers=workers,
                            parallel=parallel,
                            poll_seconds=poll_seconds,
                            pacs_verify=pacs_verify,
                        )
                        note_e2e(e2e, g)
                        gateway.seconds.append(g.seconds)
                        peak_main = max(peak_main, g.peak_main)
                        peak_tree = max(peak_tree, g.peak_tree)
                        peak_pss = max(peak_pss, g.peak_pss)
                        children = max(children, g.children)
                        if g.server_seconds is not None:
                            server.seconds.append(g.server_seconds)
                        else:
                            server.error = "no completed_at / forwarding.delivered_at"
                        note(gateway, "polls", g.polls)
                        note(gateway, "max_poll_seconds", max(g.poll_round_trips, default=0.0))
                        note(gateway, "complete_read_lag_seconds", g.complete_read_lag)
                        note(gateway, "gateway_cpu_seconds", g.gateway_cpu)
                        note(gateway, "orthanc_cpu_seconds", g.orthanc_cpu)
                        note(gateway, "forward_attempts", g.attempts)
                        note(gateway, "ingest_seconds", g.ingest_seconds)
                        note(gateway, "gateway_cpu_ms_per_poll", g.poll_cpu * 1000)
                        note(gateway, "rss_at_complete", g.rss_at_complete)
                        note(gateway, "rss_incl_workers_at_complete", g.rss_tree_at_complete)
            except (
                RuntimeError,
                TimeoutError,
                OSError,
                OrthancStartError,
                httpx.HTTPError,
                subprocess.SubprocessError,
            ) as exc:
                failed = {
                    "direct": [direct, direct_qido],
                    "gateway": [gateway, server, e2e],
                    "pipelined": [pipelined],
                }[contender]
                why = f"{type(exc).__name__}: {exc}"
                if contender != "direct":
                    log_path = logs / f"forward-{contender}-{i}.log"
                    tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
                    if tail.strip():
                        why += f"; server log ends:\n{tail}"
                for row in failed:
                    row.error = why
            finally:
                with contextlib.suppress(OSError):
                    orthanc_log = run_dir / "orthanc" / "orthanc.log"
                    if orthanc_log.exists():
                        shutil.copy(orthanc_log, logs / f"forward-{contender}-{i}-orthanc.log")
                settle(run_dir)
    gateway.peak_rss = peak_main or None
    gateway.peak_rss_tree = peak_tree or None
    if gateway.ok:
        gateway.extra["peak_pss_incl_workers"] = peak_pss
        gateway.extra["worker_processes"] = children
    return rows
