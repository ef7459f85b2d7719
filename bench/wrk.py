"""wrk, the HTTP load generator of `python -m bench.load`: installing it, running one request
kind per wrk process, reading what its Lua `done()` prints, merging two kinds' latencies.

wrk (Debian's package, 4.1.0 in bookworm) is a C event loop: a thread keeps its connections
busy for a few microseconds of CPU a request, where an asyncio + httpx client in Python took a
core for a hundred requests a second and measured its own queueing. Its latency statistics are
one distribution per run, and a Lua script cannot time a single request, so each request kind
runs as a wrk process of its own (bench/wrk_kind.lua), all at the same time, the clients split
between them; the latency of the kinds together is merged from their percentile grids.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "wrk_kind.lua"
MARK = "RELAYPACS-WRK "


class WrkUnavailable(RuntimeError):
    """wrk is not on the PATH and could not be installed."""


def ensure_wrk(log: Callable[[str], None] = print) -> str:
    """The path of `wrk`, installed from Debian's archive when missing (as root, as
    scripts/services.sh installs the servers); WrkUnavailable when it cannot be had."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise WrkUnavailable("wrk is not installed (sudo apt-get install wrk)")
    log("bench: installing wrk (apt-get install wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", "wrk"]
    done = subprocess.run(install, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, check=False)
    found = shutil.which("wrk")
    if done.returncode != 0 or not found:
        raise WrkUnavailable(f"apt-get install wrk failed: {done.stderr.decode()[-500:]}")
    return found


@dataclass
class WrkResult:
    """What bench/wrk_kind.lua's done() printed for one wrk run."""

    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    percentiles_us: list[tuple[float, int]] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def percentile_ms(self, pct: float) -> float:
        """The latency at `pct` (one of the grid's points, or the next one above)."""
        for point, value in self.percentiles_us:
            if point >= pct - 1e-9:
                return value / 1000
        return 0.0


def parse_output(stdout: str) -> WrkResult:
    """The RELAYPACS-WRK line of a wrk run with bench/wrk_kind.lua; ValueError without one."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            data: dict[str, Any] = json.loads(line[len(MARK) :])
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=data["duration_us"] / 1e6,
                errors={k: int(v) for k, v in data["errors"].items()},
                latency_us={k: float(v) for k, v in data["latency_us"].items()},
                percentiles_us=[(float(p), int(v)) for p, v in data["percentiles_us"]],
            )
    raise ValueError(f"no {MARK.strip()} line in wrk's output: {stdout[-500:]!r}")


def merged_percentile_ms(runs: Sequence[WrkResult], pct: float) -> float:
    """The latency at `pct` of all the runs' requests together, from their percentile grids:
    the smallest grid value at which at least `pct` % of all requests had been answered (each
    run weighted by its count; exact to the grid's step, 1 % below P90 and 0.5 % to P99)."""
    weighted = [r for r in runs if r.requests and r.percentiles_us]
    total = sum(r.requests for r in weighted)
    if not total:
        return 0.0
    for value in sorted({v for r in weighted for _, v in r.percentiles_us}):
        below = 0.0
        for r in weighted:
            share = max((p for p, v in r.percentiles_us if v <= value), default=0.0)
            below += r.requests * share / 100
        if below >= total * pct / 100 - 1e-6:
            return value / 1000
    return max(v for r in weighted for _, v in r.percentiles_us) / 1000


def command(
    wrk: str,
    base: str,
    paths: Sequence[str],
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    timeout_s: int = 30,
) -> list[str]:
    """wrk's command line for one kind: `connections` connections on `threads` threads for
    `seconds`, a request timeout of `timeout_s`, taking `paths` in turn."""
    return [
        wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s", "-s", str(SCRIPT), base, "--", *paths,
    ]  # fmt: skip


def run_together(
    wrk: str,
    base: str,
    kinds: Mapping[str, Sequence[str]],
    *,
    connections: Mapping[str, int],
    seconds: float,
    token: str,
    timeout_s: int = 30,
) -> dict[str, WrkResult]:
    """One wrk process per kind (its paths taken in turn, `connections[kind]` connections, one
    thread), all started together and run for `seconds`; each one's result."""
    env = {**os.environ, "RELAYPACS_BENCH_TOKEN": token}
    procs = {
        kind: subprocess.Popen(
            command(
                wrk,
                base,
                paths,
                connections=connections[kind],
                seconds=seconds,
                timeout_s=timeout_s,
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for kind, paths in kinds.items()
    }
    results: dict[str, WrkResult] = {}
    try:
        for kind, proc in procs.items():
            out, err = proc.communicate(timeout=seconds + timeout_s + 30)
            if proc.returncode != 0:
                raise RuntimeError(f"wrk ({kind}) exited with {proc.returncode}: {err[-500:]!r}")
            results[kind] = parse_output(out.decode())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results
