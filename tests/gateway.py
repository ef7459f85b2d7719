"""The real gateway as a subprocess (``relaypacs serve``) for tests and the benchmark."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.phiscan import register_server_log
from tests.servers import free_port

__all__ = ["create_user", "gateway_env", "relaypacs_command", "run_gateway", "subprocess_env"]

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


def relaypacs_command() -> list[str]:
    """How to run the ``relaypacs`` command of this virtualenv."""
    script = Path(sys.executable).parent / "relaypacs"
    if script.exists():
        return [str(script)]
    found = shutil.which("relaypacs")
    if found:
        return [found]
    return [sys.executable, "-c", "from relaypacs.cli.main import cli; cli()"]


def subprocess_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a ``relaypacs`` subprocess: ours without RELAYPACS_* (but for
    RELAYPACS_TEST_*), this checkout first on PYTHONPATH (the virtualenv may hold a
    non-editable install), then ``env``."""
    result = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RELAYPACS_") or key.startswith("RELAYPACS_TEST_")
    }
    python_path = result.get("PYTHONPATH")
    result["PYTHONPATH"] = f"{REPO}{os.pathsep}{python_path}" if python_path else str(REPO)
    result.update(env or {})
    return result


def gateway_env(data_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`subprocess_env` with ``RELAYPACS_DATA_DIR``, then ``env``."""
    return subprocess_env({"RELAYPACS_DATA_DIR": str(data_dir), **(env or {})})


@contextlib.contextmanager
def run_gateway(
    data_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    startup_timeout: float = 60.0,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run ``relaypacs serve`` on a free loopback port; yield its base URL
    (``http://127.0.0.1:PORT``, the API being under ``/api/v1``).

    The server's output goes to ``log_path`` (default ``<data_dir>/../gateway-PORT.log``); it
    is included in the error when the server does not come up, and searched for patient data
    at the end of the test run (tests/phiscan.py). Retries on another port if
    the chosen one was taken in between. Stopped with SIGTERM (then SIGKILL) on exit.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = free_port()
        log_file = log_path or data_dir.parent / f"gateway-{port}.log"
        register_server_log(log_file)
        process_env = gateway_env(data_dir, env)
        process_env.update({"RELAYPACS_HOST": LOOPBACK, "RELAYPACS_PORT": str(port)})
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [*relaypacs_command(), "serve", "--host", LOOPBACK, "--port", str(port)],
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        base_url = f"http://{LOOPBACK}:{port}"
        try:
            problem = _wait_healthy(base_url, process, startup_timeout)
            if problem is None:
                yield base_url
                return
            output = log_file.read_text(errors="replace")[-4000:]
            if attempt == 2 or "address already in use" not in output.lower():
                raise RuntimeError(f"the gateway did not start: {problem}\n{output}")
        finally:
            _stop(process)


def _wait_healthy(base_url: str, process: subprocess.Popen[bytes], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"it exited with code {process.returncode}"
        try:
            response = httpx.get(f"{base_url}/api/v1/health", timeout=2)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if response.status_code == 200:
            return None
        time.sleep(0.1)
    return f"no healthy answer within {timeout} s"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def create_user(
    data_dir: Path,
    username: str,
    password: str,
    *,
    role: str = "clinician",
    env: Mapping[str, str] | None = None,
    email: str | None = None,
) -> None:
    """``relaypacs users create USERNAME --password-stdin`` against the same data directory."""
    completed = subprocess.run(
        [
            *relaypacs_command(),
            *("users", "create", username, "--role", role, "--password-stdin"),
            *(("--email", email) if email else ()),
        ],
        input=password + "\n",
        env=gateway_env(data_dir, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"relaypacs users create failed ({completed.returncode}): {completed.stderr[-2000:]}"
        )
