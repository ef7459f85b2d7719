"""Where one upload's time goes: `python -m bench.upload_profile [--study small|large]
[--study-dir DIR] [--parallel 4]`.

One `relaypacs upload` of the study to a fresh `relaypacs serve` (SQLite, filesystem store),
as in the ingest benchmark, and printed:
- the CLI's requests: login, init and complete in milliseconds; the chunk PUTs' (and chunk
  batches') count, latency (mean, p50, p95, max), how many were in flight, and the span from
  the first to the last answer; the CLI's own phase timings (discover, hash, upload);
- the gateway process's CPU during the upload, user and system: its main thread (the event
  loop), each other thread that used any (storage writes and fsyncs, the default pool,
  aiosqlite: Linux does not know Python's thread names), and its validation workers.

The CLI runs in a child process (this module with `--cli-child`) whose HTTP client records
each request's time; the thread figures come from /proc (Linux). Not a benchmark with a
baseline (that is `python -m bench`): a profile, for deciding what to work on next.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.gateway import PASSWORD, USERNAME, client_env, server_env, server_pid
from bench.studies import FULL, prepare, warm_cache

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user s, system s) of every thread of `pid`, from /proc."""
    found: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(task.name)] = (int(fields[11]) / _TICK, int(fields[12]) / _TICK)
    return found


def _workers_cpu(pid: int) -> float:
    """CPU seconds of `pid`'s child processes (the validation workers): the live ones and
    the ones that ended (the gateway stops its workers once a study is verified)."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.children_user + times.children_system
    for child in process.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        total += child_times.user + child_times.system
    return total


def _cli_child(argv: list[str]) -> int:
    """Run `relaypacs upload ARGV` in this process, timing every request of its client; the
    timings go to the file named by RELAYPACS_PROFILE_OUT."""
    from relaypacs.client import api

    timings: list[tuple[str, str, float, float, int]] = []
    in_flight = 0
    send = api.GatewayClient._send

    async def timed_send(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        nonlocal in_flight
        in_flight += 1
        seen = in_flight
        started = time.perf_counter()
        try:
            return await send(self, method, path, **kwargs)
        finally:
            in_flight -= 1
            timings.append((method, path, started, time.perf_counter(), seen))

    api.GatewayClient._send = timed_send  # type: ignore[method-assign]
    from relaypacs.cli.main import cli

    try:
        cli.main(["upload", *argv], standalone_mode=False)
    finally:
        Path(os.environ["RELAYPACS_PROFILE_OUT"]).write_text(json.dumps(timings))
    return 0


def _is_chunk(method: str, path: str) -> bool:
    return method == "PUT" or path.endswith("/chunks:batch")


def _report_requests(timings: list[list[Any]]) -> None:
    for method, path, started, ended, _ in timings:
        if not _is_chunk(method, path):
            kind = path.rsplit("/", 1)[-1] if "/" in path else path
            print(f"  {method} {kind or path}: {(ended - started) * 1000:.0f} ms")
    for what, chosen in (
        ("chunk PUTs", [t for t in timings if t[0] == "PUT"]),
        ("chunk batches", [t for t in timings if _is_chunk(t[0], t[1]) and t[0] != "PUT"]),
    ):
        if len(chosen) < 2:
            continue
        latencies = [(ended - started) * 1000 for _, _, started, ended, _ in chosen]
        quantiles = statistics.quantiles(latencies, n=20)
        span = max(t[3] for t in chosen) - min(t[2] for t in chosen)
        print(
            f"  {len(chosen)} {what} over {span:.2f} s ({span / len(chosen) * 1000:.2f} ms "
            f"each): latency mean {statistics.mean(latencies):.1f} ms, p50 "
            f"{statistics.median(latencies):.1f}, p95 {quantiles[-1]:.1f}, max "
            f"{max(latencies):.1f}; in flight {statistics.mean(t[4] for t in chosen):.2f} on "
            "average"
        )


def profile(study_dir: Path, parallel: int) -> None:
    from tests.gateway import create_user, run_gateway

    with tempfile.TemporaryDirectory(prefix="upload-profile-", dir=REPO / "bench") as tmp:
        root = Path(tmp)
        data_dir, state_dir = root / "data", root / "state"
        data_dir.mkdir()
        state_dir.mkdir(mode=0o700)
        env = server_env(None)
        create_user(data_dir, USERNAME, PASSWORD, env=env)
        out = root / "timings.json"
        with run_gateway(data_dir, env, log_path=root / "gateway.log") as base_url:
            pid = server_pid(base_url)
            before, workers_before = _thread_cpu(pid), _workers_cpu(pid)
            started = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.upload_profile",
                    "--cli-child",
                    str(study_dir),
                    "--json",
                    "--parallel",
                    str(parallel),
                ],
                env={**client_env(state_dir, base_url), "RELAYPACS_PROFILE_OUT": str(out)},
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - started
            after, workers = _thread_cpu(pid), _workers_cpu(pid) - workers_before
        if done.returncode != 0:
            print(f"the upload failed ({done.returncode}):\n{done.stderr[-2000:]}")
            return
        summary = json.loads(done.stdout)
        timings = json.loads(out.read_text())
    print(f"{study_dir}: one upload, {wall:.2f} s from the CLI's start to its exit")
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in summary.get("timings", {}).items())
    print(f"  CLI phases: {phases}")
    _report_requests(timings)
    used = {
        tid: (user - before.get(tid, (0.0, 0.0))[0], system - before.get(tid, (0.0, 0.0))[1])
        for tid, (user, system) in after.items()
    }
    print("  gateway CPU during the upload, user / system:")
    main_user, main_system = used.pop(pid, (0.0, 0.0))
    print(f"    main thread (event loop): {main_user:.2f} s / {main_system:.2f} s")
    for tid, (user, system) in sorted(used.items(), key=lambda kv: -sum(kv[1])):
        if user + system >= 0.05:
            print(f"    thread {tid}: {user:.2f} s / {system:.2f} s")
    print(f"    validation workers: {workers:.2f} s")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--cli-child":
        return _cli_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--study", choices=sorted(FULL), default="small")
    parser.add_argument("--study-dir", type=Path, default=None)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    study_dir = args.study_dir
    if study_dir is None:
        study = prepare(FULL[args.study], REPO / "bench" / ".work" / "studies")
        warm_cache(study)
        study_dir = study.directory
    profile(study_dir.resolve(), args.parallel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
