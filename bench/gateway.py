"""The gateway under test: `relaypacs serve` (fs store, SQLite) fed by `relaypacs upload`.

The gateway is started with the shared fixture `tests.gateway.run_gateway` (a fresh data dir,
a free loopback port, SIGTERM at the end) and its user made with `tests.gateway.create_user`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench.procs import run_timed
from bench.results import Measurement
from bench.rss import RssSampler

REPO = Path(__file__).resolve().parent.parent
USERNAME = "bench"
PASSWORD = "bench-password-0123456789"  # a throw-away account in a throw-away data dir


class GatewayUnavailable(RuntimeError):
    """The gateway or its CLI is not (yet) in this tree."""


def check_ready() -> None:
    """Raise GatewayUnavailable with a clear message unless the gateway and its CLI are usable."""
    missing = [
        str(p.relative_to(REPO))
        for p in (
            REPO / "relaypacs" / "main.py",
            REPO / "relaypacs" / "cli" / "main.py",
            REPO / "relaypacs" / "cli" / "upload.py",
            REPO / "tests" / "gateway.py",
        )
        if not p.exists()
    ]
    if missing:
        raise GatewayUnavailable(
            "the gateway is not in this tree yet (missing " + ", ".join(missing) + ")"
        )
    from tests.gateway import relaypacs_command, subprocess_env

    done = subprocess.run(
        [*relaypacs_command(), "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=subprocess_env(),
    )
    if done.returncode != 0:
        raise GatewayUnavailable(f"`relaypacs --help` failed:\n{done.stderr.strip()[-1500:]}")
    absent = [c for c in ("serve", "users", "upload") if c not in done.stdout]
    if absent:
        raise GatewayUnavailable("`relaypacs` has no command " + ", ".join(absent))
    done = subprocess.run(
        [sys.executable, "-c", "import relaypacs.main, relaypacs.cli.upload"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=subprocess_env(),
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise GatewayUnavailable(f"the gateway does not import yet: {last}")


def server_env(workers: int | None) -> dict[str, str]:
    """On top of the fixture's: the embedded defaults (SQLite + filesystem store)."""
    # PYTHONFAULTHANDLER: a crash of the server (e.g. a signal) leaves a traceback in its log.
    # RELAYPACS_BENCH_GATEWAY_LOG_LEVEL=info: the gateway's log in detail (bench/.work/logs/), to
    # see where a run's time went; it costs CPU, so not by default.
    level = os.environ.get("RELAYPACS_BENCH_GATEWAY_LOG_LEVEL", "warning")
    env = {"RELAYPACS_STORAGE": "fs", "RELAYPACS_LOG_LEVEL": level, "PYTHONFAULTHANDLER": "1"}
    if workers is not None:
        env["RELAYPACS_DICOM_WORKERS"] = str(workers)
    return env


def client_env(state_dir: Path, base_url: str) -> dict[str, str]:
    """The CLI: a fresh state dir (hash cache) per run, so that every run hashes the study."""
    from tests.gateway import subprocess_env

    return subprocess_env(
        {
            "RELAYPACS_STATE_DIR": str(state_dir),
            "XDG_STATE_HOME": str(state_dir / "xdg-state"),
            "XDG_CONFIG_HOME": str(state_dir / "xdg-config"),
            "RELAYPACS_SERVER": base_url,
            "RELAYPACS_USERNAME": USERNAME,
            "RELAYPACS_PASSWORD": PASSWORD,
        }
    )


def _gone(pid: int) -> str | None:
    """How the process `pid` is no longer serving ("exited", "became a zombie"), or None."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "exited"
    return "exited" if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) else None


def server_pid(base_url: str) -> int:
    """The pid of the `relaypacs serve` child of this process that listens on base_url's port."""
    port = str(urlsplit(base_url).port)
    for child in psutil.Process().children():
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "serve" in cmd and port in cmd:
            return child.pid
    raise RuntimeError(f"no `relaypacs serve` child process found for {base_url}")


def _upload_report(stdout: str) -> dict[str, Any]:
    """The CLI's --json document (the last JSON object it printed)."""
    text = stdout.strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
        for line in reversed(text.splitlines()):
            try:
                doc = json.loads(line)
                break
            except ValueError:
                continue
    if not isinstance(doc, dict):
        raise RuntimeError(f"`relaypacs upload --json` printed no JSON object: {text[-500:]!r}")
    return doc


def _check_report(doc: dict[str, Any], files: int, total_bytes: int) -> str | None:
    """Why the CLI's summary is not a full, validated upload of the study (None: it is)."""
    if doc.get("exit_code") not in (None, 0):
        return f"exit_code {doc.get('exit_code')}: {doc.get('error')}"
    found = doc.get("studies") or []
    statuses = [s.get("status") for s in found if isinstance(s, dict)]
    if statuses != ["validated"]:
        return f"study statuses {statuses}, expected ['validated']"
    totals = doc.get("totals") or {}
    if totals.get("bytes_sent") not in (None, total_bytes):
        return (
            f"bytes_sent {totals.get('bytes_sent')}, expected {total_bytes} (not a fresh upload?)"
        )
    if totals.get("files") not in (None, files):
        return f"{totals.get('files')} files uploaded, expected {files}"
    if totals.get("hash_cache_hits"):
        return f"{totals['hash_cache_hits']} hash cache hits: the client state was not fresh"
    return None


def _timings(doc: dict[str, Any]) -> dict[str, float]:
    """The CLI's own phase timings from its --json summary (e.g. discover, hash, upload)."""
    found = doc.get("timings")
    if not isinstance(found, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in found.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def measure(
    name: str,
    study_dir: Path,
    files: Sequence[Path],
    total_bytes: int,
    scratch: Path,
    logs: Path,
    *,
    parallel: int,
    repeat: int,
    workers: int | None,
    settle: Callable[[Path], None],
    batch_size: str | None = None,
) -> Measurement:
    """Upload the study with the CLI to a fresh gateway (new data dir) `repeat` times;
    ``batch_size``: the CLI's --batch-size (None: its default)."""
    from tests.gateway import create_user, relaypacs_command, run_gateway

    result = Measurement(name=name, kind="gateway", bytes=total_bytes, files=len(files))
    batch = [] if batch_size is None else ["--batch-size", batch_size]
    result.note = (
        f"`relaypacs upload --json --parallel {parallel}{' '.join(['', *batch])}`, CLI start "
        "to exit (after `complete` answered); fresh gateway and client state per run"
    )
    cli_timings: dict[str, list[float]] = {}
    server_cpu: list[float] = []
    client_cpu: list[float] = []
    client_rss = peak = peak_tree = peak_pss = children = 0
    logs.mkdir(parents=True, exist_ok=True)
    for i in range(repeat):
        run_dir = scratch / f"gateway-{i}"
        settle(run_dir)
        data_dir, state_dir = run_dir / "data", run_dir / "client-state"
        data_dir.mkdir(parents=True)
        state_dir.mkdir(parents=True, mode=0o700)
        senv = server_env(workers)
        log_path = logs / f"gateway-{i}.log"
        logs.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        try:
            create_user(data_dir, USERNAME, PASSWORD, env=senv)
            with run_gateway(data_dir, senv, log_path=log_path) as base_url:
                pid = server_pid(base_url)
                sampler = RssSampler(pid).start()
                try:
                    cpu_before = sampler.cpu_seconds()
                    run = run_timed(
                        [
                            *relaypacs_command(),
                            "upload",
                            str(study_dir),
                            "--json",
                            "--parallel",
                            str(parallel),
                            *batch,
                        ],
                        env=client_env(state_dir, base_url),
                        cwd=REPO,
                        log_dir=logs,
                        name=f"upload-{i}",
                    )
                    sampler.sample()
                    server_cpu.append(sampler.cpu_seconds() - cpu_before)
                    died = _gone(pid)
                finally:
                    sampler.stop()
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
            result.error = f"{type(exc).__name__}: {exc}" + (
                f"; server log ends:\n{tail}" if tail and tail not in str(exc) else ""
            )
            break
        peak = max(peak, sampler.hwm_main or sampler.peak_main)
        peak_tree = max(peak_tree, sampler.peak_tree)
        peak_pss = max(peak_pss, sampler.peak_pss_tree)
        children = max(children, sampler.max_descendants)
        client_rss = max(client_rss, run.peak_rss)
        client_cpu.append(run.cpu_seconds)
        if run.returncode != 0:
            try:
                why = str(_upload_report(run.stdout).get("error"))
            except RuntimeError:
                why = (run.stderr or run.stdout).strip()[-800:]
            result.error = f"`relaypacs upload` exited {run.returncode}: {why}"
            if died:
                tail = log_path.read_text(errors="replace")[-1500:]
                result.error += (
                    f"\nthe gateway process ({died}) during the upload; log ends:\n{tail}"
                )
            break
        try:
            doc = _upload_report(run.stdout)
        except RuntimeError as exc:
            result.error = str(exc)
            break
        problem = _check_report(doc, len(files), total_bytes)
        if problem:
            result.error = f"upload not complete: {problem}"
            break
        for key, value in _timings(doc).items():
            cli_timings.setdefault(f"cli_{key}", []).append(value)
        result.seconds.append(run.seconds)
        settle(run_dir)
    result.peak_rss = peak or None
    result.peak_rss_tree = peak_tree or None
    result.extra["worker_processes"] = children
    result.extra["peak_pss_incl_workers"] = peak_pss
    result.extra["server_cpu_seconds"] = server_cpu
    result.extra["client_cpu_seconds"] = client_cpu
    result.extra["client_peak_rss"] = client_rss
    result.extra.update(cli_timings)
    return result
