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
    script = Path(sys.executable).parent / "relaypacs"
    if script.exists():
        return [str(script)]
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
        [*relaypacs_cmd(), "--help"], capture_output=True, text=True, check=False, cwd=REPO
    )
    if done.returncode != 0:
        raise GatewayUnavailable(f"`relaypacs --help` failed:\n{done.stderr.strip()[-1500:]}")
    absent = [c for c in ("serve", "users", "upload") if c not in done.stdout]
    if absent:
        raise GatewayUnavailable("`relaypacs` has no command " + ", ".join(absent))


def _env(data_dir: Path, state_dir: Path, port: int, workers: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYPACS_")}
    env.update(
        RELAYPACS_DATA_DIR=str(data_dir),
        RELAYPACS_HOST=LOOPBACK,
        RELAYPACS_PORT=str(port),
        RELAYPACS_STORAGE="fs",
        RELAYPACS_LOG_LEVEL="warning",
        # The client: a fresh hash cache per run, so every run hashes the study.
        RELAYPACS_STATE_DIR=str(state_dir),
        XDG_STATE_HOME=str(state_dir / "xdg-state"),
        XDG_CONFIG_HOME=str(state_dir / "xdg-config"),
        RELAYPACS_URL=f"http://{LOOPBACK}:{port}",
        RELAYPACS_USERNAME=USERNAME,
        RELAYPACS_PASSWORD=PASSWORD,
    )
    if workers is not None:
        env["RELAYPACS_DICOM_WORKERS"] = str(workers)
    return env


def _run(cmd: Sequence[str], env: Mapping[str, str], what: str) -> str:
    done = subprocess.run(
        list(cmd),
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
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


def _find(doc: Any, *keys: str) -> Any:
    """The first value under any of `keys`, searched depth-first in `doc`."""
    if isinstance(doc, dict):
        for key in keys:
            if key in doc:
                return doc[key]
        for value in doc.values():
            found = _find(value, *keys)
            if found is not None:
                return found
    return None


def measure(
    name: str,
    study_dir: Path,
    files: int,
    total_bytes: int,
    scratch: Path,
    *,
    parallel: int,
    repeat: int,
    workers: int | None,
    settle: Callable[[Path], None],
    log: Callable[[str], None] = print,
) -> Measurement:
    """Upload the study with the CLI to a fresh gateway `repeat` times."""
    result = Measurement(name=name, kind="gateway", bytes=total_bytes, files=files)
    result.note = (
        f"`relaypacs upload --json --parallel {parallel}`, CLI start to exit; "
        "fresh gateway + client state per run"
    )
    hashing: list[float] = []
    client_rss = 0
    peak = peak_tree = 0
    for i in range(repeat):
        run_dir = scratch / f"gateway-{i}"
        settle(run_dir)
        data_dir, state_dir, logs = run_dir / "data", run_dir / "client-state", scratch / "logs"
        data_dir.mkdir(parents=True)
        state_dir.mkdir(parents=True, mode=0o700)
        logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = _env(data_dir, state_dir, port, workers)
        with (logs / f"gateway-{i}.log").open("wb") as server_log:
            proc = subprocess.Popen(
                [*relaypacs_cmd(), "serve"],
                env=env,
                cwd=REPO,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        sampler = RssSampler(proc.pid).start()
        try:
            _wait_healthy(port, proc, 60.0)
            _run(
                [*relaypacs_cmd(), "users", "create", USERNAME, "--password", PASSWORD],
                env,
                "`relaypacs users create`",
            )
            run = run_timed(
                [*relaypacs_cmd(), "upload", str(study_dir), "--json", "--parallel", str(parallel)],
                env=env,
                cwd=REPO,
                log_dir=logs,
                name=f"upload-{i}",
            )
            sampler.sample()
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            break
        finally:
            stop(proc, timeout=30.0)
            sampler.stop()
        peak = max(peak, sampler.hwm_main or sampler.peak_main)
        peak_tree = max(peak_tree, sampler.peak_tree)
        client_rss = max(client_rss, run.peak_rss)
        if run.returncode != 0:
            result.error = (
                f"`relaypacs upload` exited {run.returncode}: "
                f"{(run.stderr or run.stdout).strip()[-800:]}"
            )
            break
        try:
            doc = _upload_report(run.stdout)
        except RuntimeError as exc:
            result.error = str(exc)
            break
        status = _find(doc, "status")
        if status not in (None, "validated"):
            result.error = f"upload ended with status {status!r}, not 'validated'"
            break
        seconds = _find(doc, "hash_seconds", "hashing_seconds")
        if isinstance(seconds, int | float):
            hashing.append(float(seconds))
        result.seconds.append(run.seconds)
        settle(run_dir)
    result.peak_rss = peak or None
    result.peak_rss_tree = peak_tree or None
    result.extra = {"client_peak_rss": client_rss}
    if hashing:
        result.extra["cli_hashing_seconds"] = hashing
    return result
