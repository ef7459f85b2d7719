"""Starting, timing and stopping the processes the benchmark drives (all on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.rss import RssSampler

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port` (or `proc` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f} s")


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of `proc`'s stdout, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise TimeoutError(f"no output from pid {proc.pid} after {timeout:.0f} s")
        return proc.stdout.readline()
    finally:
        sel.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM `proc` (the process we started, by its pid), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class TimedRun:
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    peak_rss_tree: int
    cpu_seconds: float  # of the process itself, as of its last sample (within ~50 ms of exit)


def run_timed(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600.0,
    log_dir: Path | None = None,
    name: str = "run",
) -> TimedRun:
    """Run `cmd` to its exit; wall time from just before spawn to just after exit."""
    out_path = err_path = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(out_path.open("w+b")) if out_path else subprocess.PIPE
        err = stack.enter_context(err_path.open("w+b")) if err_path else subprocess.PIPE
        started = time.perf_counter()
        proc = subprocess.Popen(
            [os.fspath(c) for c in cmd],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        sampler = RssSampler(proc.pid).start()
        try:
            stdout_b, stderr_b = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            seconds = time.perf_counter() - started
            sampler.stop()
        if out_path and err_path:
            stdout_b = out_path.read_bytes()
            stderr_b = err_path.read_bytes()
    return TimedRun(
        seconds=seconds,
        returncode=proc.returncode,
        stdout=(stdout_b or b"").decode(errors="replace"),
        stderr=(stderr_b or b"").decode(errors="replace"),
        peak_rss=sampler.hwm_main or sampler.peak_main,
        peak_rss_tree=sampler.peak_tree,
        cpu_seconds=sampler.last_cpu,
    )


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and its exited (waited-for) children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
        total += getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
    return total


def children_cpu() -> float:
    """CPU seconds of this process's exited, waited-for children (a CLI run as a subprocess)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int | None) -> float:
    """CPU seconds of one process (0 when there is none, or it is gone)."""
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system
