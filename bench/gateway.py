"""The gateway under test: `relaypacs serve` (fs store, SQLite) fed by `relaypacs upload`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.procs import LOOPBACK, free_port, run_timed, stop
from bench.results import Measurement
from bench.rss import RssSampler

REPO = Path(__file__).resolve().parent.parent
USERNAME = "bench"
PASSWORD = "bench-password-0123456789"  # a throw-away account in a throw-away data dir


class GatewayUnavailable(RuntimeError):
    """The gateway or its CLI is not (yet) in this tree."""


def relaypacs_cmd() -> list[str]:
    """`relaypacs` run by this interpreter from this tree (works without the console script)."""
    return [sys.executable, "-c", "import sys; from relaypacs.cli.main import cli; sys.exit(cli())"]


def check_ready() -> None:
    """Raise GatewayUnavailable with a clear message unless serve / users / upload exist."""
    missing = [
        str(p.relative_to(REPO))
        for p in (
            REPO / "relaypacs" / "main.py",
            REPO / "relaypacs" / "cli" / "main.py",
            REPO / "relaypacs" / "cli" / "upload.py",
        )
        if not p.exists()
    ]
    if missing:
        raise GatewayUnavailable(
            "the gateway is not in this tree yet (missing " + ", ".join(missing) + ")"
        )
    done = subprocess.run(
        [*relaypacs_cmd(), "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=_clean_env(),
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
        env=_clean_env(),
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise GatewayUnavailable(f"the gateway does not import yet: {last}")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYPACS_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    return env


def server_env(data_dir: Path, port: int, workers: int | None) -> dict[str, str]:
    """The gateway's embedded defaults (SQLite + filesystem store under data_dir) on loopback."""
    env = _clean_env()
    env.update(
        RELAYPACS_DATA_DIR=str(data_dir),
        RELAYPACS_HOST=LOOPBACK,
        RELAYPACS_PORT=str(port),
        RELAYPACS_STORAGE="fs",
        RELAYPACS_LOG_LEVEL="warning",
    )
    if workers is not None:
        env["RELAYPACS_DICOM_WORKERS"] = str(workers)
    return env


def client_env(state_dir: Path, port: int) -> dict[str, str]:
    """The CLI: a fresh state dir (hash cache) per run, so that every run hashes the study."""
    env = _clean_env()
    env.update(
        RELAYPACS_STATE_DIR=str(state_dir),
        XDG_STATE_HOME=str(state_dir / "xdg-state"),
        XDG_CONFIG_HOME=str(state_dir / "xdg-config"),
        RELAYPACS_SERVER=f"http://{LOOPBACK}:{port}",
        RELAYPACS_USERNAME=USERNAME,
        RELAYPACS_PASSWORD=PASSWORD,
    )
    return env


def _run(cmd: Sequence[str], env: Mapping[str, str], what: str, stdin: str = "") -> str:
    done = subprocess.run(
        list(cmd),
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        input=stdin,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} exited {done.returncode}:\n{(done.stderr or done.stdout).strip()[-1500:]}"
        )
    return done.stdout


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    url = f"http://{LOOPBACK}:{port}/api/v1/health"
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`relaypacs serve` exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"gateway not healthy at {url} after {timeout:.0f} s ({last})")


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
) -> Measurement:
    """Upload the study with the CLI to a fresh gateway (new data dir) `repeat` times."""
    result = Measurement(name=name, kind="gateway", bytes=total_bytes, files=len(files))
    result.note = (
        f"`relaypacs upload --json --parallel {parallel}`, CLI start to exit "
        "(after `complete` answered); fresh gateway and client state per run"
    )
    cli_timings: dict[str, list[float]] = {}
    server_cpu: list[float] = []
    client_cpu: list[float] = []
    client_rss = peak = peak_tree = children = 0
    logs.mkdir(parents=True, exist_ok=True)
    for i in range(repeat):
        run_dir = scratch / f"gateway-{i}"
        settle(run_dir)
        data_dir, state_dir = run_dir / "data", run_dir / "client-state"
        data_dir.mkdir(parents=True)
        state_dir.mkdir(parents=True, mode=0o700)
        port = free_port()
        senv, cenv = server_env(data_dir, port, workers), client_env(state_dir, port)
        try:
            _run(
                [*relaypacs_cmd(), "users", "create", USERNAME, "--password-stdin"],
                senv,
                "`relaypacs users create`",
                stdin=PASSWORD + "\n",
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result.error = str(exc)
            break
        with (logs / f"gateway-{i}.log").open("wb") as server_log:
            proc = subprocess.Popen(
                [*relaypacs_cmd(), "serve"],
                env=senv,
                cwd=REPO,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        sampler = RssSampler(proc.pid).start()
        try:
            _wait_healthy(port, proc, 60.0)
            cpu_before = sampler.cpu_seconds()
            run = run_timed(
                [*relaypacs_cmd(), "upload", str(study_dir), "--json", "--parallel", str(parallel)],
                env=cenv,
                cwd=REPO,
                log_dir=logs,
                name=f"upload-{i}",
            )
            sampler.sample()
            server_cpu.append(sampler.cpu_seconds() - cpu_before)
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            server_log_tail = (logs / f"gateway-{i}.log").read_text(errors="replace")[-1500:]
            result.error = f"{type(exc).__name__}: {exc}; server log ends:\n{server_log_tail}"
            break
        finally:
            code = stop(proc, timeout=30.0)
            sampler.stop()
        peak = max(peak, sampler.hwm_main or sampler.peak_main)
        peak_tree = max(peak_tree, sampler.peak_tree)
        children = max(children, sampler.max_descendants)
        client_rss = max(client_rss, run.peak_rss)
        client_cpu.append(run.cpu_seconds)
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip()[-800:]
            result.error = f"`relaypacs upload` exited {run.returncode}: {tail}"
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
        if code not in (0, -15):
            result.extra["server_exit"] = code
        for key, value in _timings(doc).items():
            cli_timings.setdefault(f"cli_{key}", []).append(value)
        result.seconds.append(run.seconds)
        settle(run_dir)
    result.peak_rss = peak or None
    result.peak_rss_tree = peak_tree or None
    result.extra["worker_processes"] = children
    result.extra["server_cpu_seconds"] = server_cpu
    result.extra["client_cpu_seconds"] = client_cpu
    result.extra["client_peak_rss"] = client_rss
    result.extra.update(cli_timings)
    return result
