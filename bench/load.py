"""The API under load: N clients polling an upload's status and the list back to back.

    python -m bench.load                                  # SQLite, 1 process, 100 clients
    python -m bench.load --db postgres --workers 2        # PostgreSQL + Redis, 2 workers
    python -m bench.load --db postgres --workers 2 --seconds 30 --json out.json
    python -m bench.load --kinds status                   # the status poll alone

A fresh gateway (`relaypacs serve`, its own data dir; with `--db postgres` a database of its
own, dropped at the end, and Redis database 15), one clinician with `--uploads` uploads started
(a manifest each, so the list has something to list), then `--clients` asyncio clients in this
process, each on its own connection, sending back to back `GET /uploads/{id}?files=false` (the
status poll the CLI and the web app make) and `GET /uploads?limit=50` (the list), for
`--seconds` after a warm-up of `--warmup` seconds (`--kinds status` or `--kinds list`: that one
alone, for its own CPU per request). Bounded: at most `--clients` requests in
flight, no retry, a request timeout of 30 s.

Prints, per request kind, the count, the throughput and P50 / P95 / P99 latency, the errors,
and the CPU seconds of the gateway's processes and of this load generator (on a 2-core
machine the generator takes its share: it is listed so that its cost is seen).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.gateway import PASSWORD, REPO, USERNAME
from bench.procs import free_port, tree_cpu

WORK = Path(__file__).resolve().parent / ".work"
POSTGRES = os.environ.get("RELAYPACS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("RELAYPACS_BENCH_REDIS", "redis://127.0.0.1:6379/15")
API = "/api/v1"


def log(message: str) -> None:
    print(message, flush=True)


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", f"{POSTGRES}/postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
    )


@contextmanager
def database(kind: str) -> Iterator[dict[str, str]]:
    """The gateway's environment for `kind`: SQLite in its data dir, or a fresh PostgreSQL
    database (dropped afterwards) with Redis."""
    if kind == "sqlite":
        yield {}
        return
    name = f"relaypacs_bench_{secrets.token_hex(4)}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        host = POSTGRES.removeprefix("postgresql://")
        yield {
            "RELAYPACS_DATABASE_URL": f"postgresql+asyncpg://{host}/{name}",
            "RELAYPACS_REDIS_URL": REDIS,
        }
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def gateway(data_dir: Path, env: dict[str, str], workers: int) -> Iterator[tuple[str, int]]:
    """`relaypacs serve --workers N` on a free loopback port: (base URL, pid)."""
    from tests.gateway import create_user, gateway_env, relaypacs_command

    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "RELAYPACS_LOG_LEVEL": "warning",
        "RELAYPACS_RATE_LIMIT_UPLOAD_INIT": "100000/minute",
        **env,
    }
    subprocess.run(
        [*relaypacs_command(), "db", "upgrade"],
        env=gateway_env(data_dir, env),
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    create_user(data_dir, USERNAME, PASSWORD, env=env)
    port = free_port()
    log_file = (data_dir.parent / "gateway.log").open("ab")
    proc = subprocess.Popen(
        [*relaypacs_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)],
        env=gateway_env(data_dir, env), stdout=log_file, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    log_file.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; see {data_dir.parent}/gateway.log")
            time.sleep(0.3)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def seed(http: httpx.AsyncClient, uploads: int) -> list[str]:
    """Log in and start `uploads` uploads (a one-file manifest each); their ids."""
    login = await http.post(f"{API}/auth/login", json={"username": USERNAME, "password": PASSWORD})
    login.raise_for_status()
    http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    ids = []
    for i in range(uploads):
        digest = hashlib.sha256(f"bench-load-{i}-{secrets.token_hex(4)}".encode()).hexdigest()
        manifest = {
            "study_instance_uid": f"2.25.{secrets.randbits(64)}{i}",
            "metadata": {"modality": "CT"},
            "files": [{"name": "IM0001.dcm", "size": 1000, "sha256": digest}],
        }
        answer = await http.post(f"{API}/uploads", json=manifest)
        answer.raise_for_status()
        ids.append(answer.json()["id"])
    return ids


async def load(
    base: str,
    *,
    clients: int,
    seconds: float,
    warmup: float,
    uploads: int,
    kinds: Sequence[str] = ("status", "list"),
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as http:
        ids = await seed(http, uploads)
        latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
        errors: dict[str, int] = {}
        answered = [0]  # every request answered, the warm-up's too (for CPU per request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def client(n: int) -> None:
            every = {"status": f"{API}/uploads/{ids[n % len(ids)]}?files=false",
                     "list": f"{API}/uploads?limit=50"}  # fmt: skip
            paths = [(kind, every[kind]) for kind in kinds]
            i = n
            while (now := loop.time()) < stop_at:
                kind, path = paths[i % len(paths)]
                i += 1
                try:
                    answer = await http.get(path)
                    ok = answer.status_code == 200
                    label = str(answer.status_code)
                except httpx.HTTPError as exc:
                    ok, label = False, type(exc).__name__
                done = loop.time()
                answered[0] += 1
                if now >= measure_from:
                    if ok:
                        latencies[kind].append(done - now)
                    else:
                        errors[f"{kind} {label}"] = errors.get(f"{kind} {label}", 0) + 1

        await asyncio.gather(*(client(n) for n in range(clients)))
    result: dict[str, Any] = {"errors": errors, "kinds": {}, "requests": answered[0] + uploads + 1}
    for kind, values in latencies.items():
        values.sort()
        result["kinds"][kind] = {
            "count": len(values),
            "per_second": len(values) / seconds,
            "p50_ms": _pct(values, 50) * 1000,
            "p95_ms": _pct(values, 95) * 1000,
            "p99_ms": _pct(values, 99) * 1000,
            "mean_ms": statistics.fmean(values) * 1000 if values else 0.0,
        }
    every = sorted(v for values in latencies.values() for v in values)
    result["all"] = {
        "per_second": len(every) / seconds,
        "p50_ms": _pct(every, 50) * 1000,
        "p95_ms": _pct(every, 95) * 1000,
        "p99_ms": _pct(every, 99) * 1000,
    }
    return result


def _pct(values: Sequence[float], pct: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * pct / 100))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="seconds the gateway's idle CPU is measured for, before the load",
    )
    parser.add_argument(
        "--kinds",
        default="status,list",
        help="which requests the clients send, in turn: status, list or both (the default); "
        "one alone gives its own CPU per request",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - {"status", "list"}:
        parser.error("--kinds: status, list or status,list")
    run_dir = WORK / "scratch" / f"load-{os.getpid()}"
    with database(args.db) as env, gateway(run_dir / "data", env, args.workers) as (base, pid):
        me = psutil.Process()
        # The gateway's own CPU while nobody calls it (its background work, idle workers, the
        # supervisor): subtracted for the net CPU per request, since at the few tens of
        # requests a second a loaded machine allows it is a good part of the total.
        idle_from, idle_cpu = time.monotonic(), tree_cpu(pid)
        time.sleep(args.idle)
        idle_rate = (tree_cpu(pid) - idle_cpu) / (time.monotonic() - idle_from)
        cpu_gateway, cpu_me = tree_cpu(pid), sum(me.cpu_times()[:2])
        started = time.monotonic()
        result = asyncio.run(
            load(
                base,
                clients=args.clients,
                seconds=args.seconds,
                warmup=args.warmup,
                uploads=args.uploads,
                kinds=kinds,
            )
        )
        wall = time.monotonic() - started
        result["gateway_cpu_seconds"] = tree_cpu(pid) - cpu_gateway
        result["generator_cpu_seconds"] = sum(me.cpu_times()[:2]) - cpu_me
        result["wall_seconds"] = wall
        result["gateway_cpu_ms_per_request"] = (
            result["gateway_cpu_seconds"] / max(1, result["requests"]) * 1000
        )
        result["gateway_idle_cpu_per_second"] = idle_rate
        result["gateway_net_cpu_ms_per_request"] = (
            max(0.0, result["gateway_cpu_seconds"] - idle_rate * wall)
            / max(1, result["requests"])
            * 1000
        )
    result["setup"] = {
        k: getattr(args, k) for k in ("db", "workers", "clients", "seconds", "kinds")
    }
    result["load_average"] = os.getloadavg()
    log(
        f"{args.db}, {args.workers} worker(s), {args.clients} clients, {args.seconds:g} s "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    for kind, row in result["kinds"].items():
        log(
            f"  {kind:<7} {row['per_second']:7.1f} req/s  P50 {row['p50_ms']:6.1f} ms  "
            f"P95 {row['p95_ms']:6.1f} ms  P99 {row['p99_ms']:6.1f} ms"
        )
    row = result["all"]
    log(
        f"  {'all':<7} {row['per_second']:7.1f} req/s  P50 {row['p50_ms']:6.1f} ms  "
        f"P95 {row['p95_ms']:6.1f} ms  P99 {row['p99_ms']:6.1f} ms"
    )
    log(
        f"  errors {result['errors'] or 'none'}; CPU: gateway {result['gateway_cpu_seconds']:.1f}"
        f" s, generator {result['generator_cpu_seconds']:.1f} s over {wall:.1f} s; gateway "
        f"{result['gateway_cpu_ms_per_request']:.1f} ms of CPU per request, "
        f"{result['gateway_net_cpu_ms_per_request']:.1f} ms net of its idle "
        f"{result['gateway_idle_cpu_per_second'] * 1000:.0f} ms/s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
