"""Real servers for tests, started on free loopback ports and stopped afterwards."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

__all__ = ["RedisServer", "free_port", "moto_server", "redis_server", "wait_for_http"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(
    url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``url`` until it answers any HTTP status; fail if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered, with an error status: it is up
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout} s") from None
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def moto_server(*, startup_timeout: float = 30.0) -> Iterator[str]:
    """Run moto's S3-compatible server on a free 127.0.0.1 port; yield its endpoint URL.

    Retries on another port if the chosen one was taken in between (``free_port`` is racy).
    """
    for attempt in range(3):
        port = free_port()
        endpoint = f"http://{LOOPBACK}:{port}"
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                try:
                    wait_for_http(f"{endpoint}/moto-api/", timeout=startup_timeout, process=process)
                except (RuntimeError, TimeoutError) as exc:
                    _stop(process)
                    log.seek(0)
                    output = log.read()[-4000:].decode(errors="replace")
                    if attempt == 2:
                        raise RuntimeError(f"moto server did not start: {exc}\n{output}") from None
                    continue
                yield endpoint
                return
            finally:
                _stop(process)


class RedisServer:
    """A redis-server of our own (no persistence), which a test may stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://{LOOPBACK}:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [
                "/usr/bin/redis-server",
                "--bind",
                LOOPBACK,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Our own redis-server on a free loopback port; stopped (if still running) at the end."""
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
