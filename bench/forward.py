"""Forwarding: the gateway sending an accepted study to a real Orthanc vs a direct STOW-RS client.

Per run, a fresh Orthanc 1.10 with the DICOMweb plugin (`tests.pacs.run_orthanc`: loopback port,
basic auth, its own storage under the run's scratch dir, killed and deleted afterwards), then:

- direct: `bench.stow_direct` sends the study's files to it, 10 per request, 4 in flight, then
  lists the study with QIDO-RS (rows "direct STOW" and "direct STOW + QIDO");
- gateway (bench/forward_gateway.py): `relaypacs serve` (fresh data dir, SQLite + fs store)
  with RELAYPACS_PACS_URL on that Orthanc; `relaypacs upload -v --json` uploads the study. The
  CLI's own log line for the `complete` answer (httpx logs every response; `-v` puts it on
  stderr with a millisecond time stamp) gives the upload id and the moment `complete` answered
  (the upload is then `queued`); from there `GET /api/v1/uploads/{id}?files=false` (the light
  view `upload --wait` polls) is polled every 250 ms until `delivered`; the forwarding time is
  the gateway's own, from the upload's completed_at to its delivered_at (the row "server time
  stamps", which the goal uses); the row "complete->delivered" is the client's view, with the
  polls' granularity. Peak RSS of the gateway (main process; incl. its validator workers) is
  sampled over that phase only (the main process's VmHWM is reset when `complete` answers).
  Orthanc is then asked (QIDO-RS) whether it lists every SOP Instance UID.

The two contenders alternate run by run, so load from elsewhere on the machine hits both alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench import stow_direct
from bench.forward_gateway import (
    POLL_SECONDS,
    GatewayRun,
    StudyUids,
    gateway_run,
    missing,
    orthanc_pid,
    study_uids,
)
from bench.procs import process_cpu
from bench.report import DIRECT, DIRECT_QIDO, GATEWAY_E2E, GATEWAY_PIPELINED, GATEWAY_SERVER
from bench.report import GATEWAY_FORWARD as GATEWAY
from bench.results import Measurement

# Where bench.run and bench.netforward find them.
__all__ = [
    "POLL_SECONDS",
    "ForwardUnavailable",
    "GatewayRun",
    "StudyUids",
    "check_ready",
    "gateway_run",
    "measure",
    "missing",
    "study_uids",
]

PER_REQUEST = 10  # instances per STOW-RS request: the gateway's default batch_instances
IN_FLIGHT = 4  # the direct client's requests in flight (the gateway: its max_in_flight, 5)

assert f"({PER_REQUEST}/req, {IN_FLIGHT} in flight)" in DIRECT


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
                        cpu_before = process_cpu(orthanc_pid(orthanc))
                        d = stow_direct.send(
                            files,
                            uids.study,
                            orthanc.dicomweb_url,
                            orthanc.auth,
                            per_request=PER_REQUEST,
                            in_flight=IN_FLIGHT,
                        )
                        orthanc_cpu = process_cpu(orthanc_pid(orthanc)) - cpu_before
                        problem = (
                            f"FailedSOPSequence for {len(d.failed)} instances"
                            if d.failed
                            else missing(uids.instances, d.stored)
                            or missing(uids.instances, d.listed)
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
                        g = gateway_run(
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
                        g = gateway_run(
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
