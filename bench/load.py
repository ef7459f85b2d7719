"""The API under load: N clients polling an upload's status and the list back to back.

    python -m bench.load                                  # SQLite, 1 process, 100 clients
    python -m bench.load --db postgres --workers 2        # PostgreSQL + Redis, 2 workers
    python -m bench.load --db postgres --workers 2 --seconds 30 --json out.json
    python -m bench.load --kinds status                   # the status poll alone
    python -m bench.load --generator httpx                # the Python generator, for comparison

A fresh gateway (`relaypacs serve`, its own data dir; with `--db postgres` a database of its
own, dropped at the end, and Redis database 15), one clinician with `--uploads` uploads started
(a manifest each, so the list has something to list), then `--clients` clients, each on its own
connection, sending back to back `GET /uploads/{id}?files=false` (the status poll the CLI and
the web app make) and `GET /uploads?limit=50` (the list), for `--seconds` after a warm-up of
`--warmup` seconds (`--kinds status` or `--kinds list`: that one alone, for its own CPU per
request). Bounded: at most `--clients` requests in flight, no retry, a request timeout of 30 s.

The clients are wrk's (bench/wrk.py, bench/wrk_kind.lua; Debian's package, installed when
missing): one wrk process of one thread per request kind, the clients split between them, since
wrk's latency statistics are one distribution per run. `--generator httpx` (or `auto` when wrk
cannot be had) runs them as asyncio + httpx clients in this process, each alternating the two
kinds; that generator takes a core of its own at ~100 requests a second, and what it measures
is then mostly its own queueing.

Prints, per request kind, the count, the throughput and P50 / P95 / P99 latency, the errors,
and the CPU seconds of the gateway's processes and of the load generator (on a 2-core machine
the generator takes its share: it is listed so that its cost is seen).
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
from bench.procs import children_cpu, free_port, tree_cpu
from bench.wrk import WrkUnavailable, ensure_wrk, merged_percentile_ms, run_together

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
        [
            *relaypacs_command(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=gateway_env(data_dir, env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        start_new_session=True,
    )
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


async def load_httpx(
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


def paths(ids: Sequence[str]) -> dict[str, list[str]]:
    """Each kind's paths: the status of every seeded upload in turn, or the list."""
    return {
        "status": [f"{API}/uploads/{upload}?files=false" for upload in ids],
        "list": [f"{API}/uploads?limit=50"],
    }


async def _prepare(base: str, uploads: int, kinds: Sequence[str]) -> tuple[str, list[str]]:
    """Seed the uploads; the bearer token and their ids, once each kind's first path has
    answered 200 (a redirect or an error would otherwise pass for a fast answer: wrk counts
    only statuses >= 400 as errors)."""
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
        ids = await seed(http, uploads)
        for kind in kinds:
            answer = await http.get(paths(ids)[kind][0])
            if answer.status_code != 200:
                raise RuntimeError(f"{kind}: {answer.status_code} before the load")
        return http.headers["Authorization"].removeprefix("Bearer "), ids


def load_wrk(
    base: str,
    *,
    wrk: str,
    clients: int,
    seconds: float,
    warmup: float,
    uploads: int,
    kinds: Sequence[str] = ("status", "list"),
) -> dict[str, Any]:
    """The same load from wrk: one wrk process per kind, the clients split between them (the
    first kinds take the remainder), a warm-up run, then the measured one."""
    token, ids = asyncio.run(_prepare(base, uploads, kinds))
    every = paths(ids)
    chosen = {kind: every[kind] for kind in kinds}
    connections = {
        kind: clients // len(kinds) + (1 if i < clients % len(kinds) else 0)
        for i, kind in enumerate(kinds)
    }
    answered = uploads + 1 + len(kinds)
    if warmup > 0:
        warm = run_together(wrk, base, chosen, connections=connections, seconds=warmup, token=token)
        answered += sum(r.requests for r in warm.values())
    runs = run_together(wrk, base, chosen, connections=connections, seconds=seconds, token=token)
    answered += sum(r.requests for r in runs.values())
    result: dict[str, Any] = {"errors": {}, "kinds": {}, "requests": answered}
    for kind, run in runs.items():
        result["errors"].update({f"{kind} {k}": n for k, n in run.errors.items() if n})
        result["kinds"][kind] = {
            "count": run.requests,
            "connections": connections[kind],
            "per_second": run.requests / run.duration_s,
            "p50_ms": run.percentile_ms(50),
            "p95_ms": run.percentile_ms(95),
            "p99_ms": run.percentile_ms(99),
            "mean_ms": run.latency_us["mean"] / 1000,
        }
    every_run = list(runs.values())
    result["all"] = {
        "per_second": sum(r.requests / r.duration_s for r in every_run),
        "p50_ms": merged_percentile_ms(every_run, 50),
        "p95_ms": merged_percentile_ms(every_run, 95),
        "p99_ms": merged_percentile_ms(every_run, 99),
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
        help="which requests the clients send: status, list or both (the default: with wrk, "
        "half the clients each; with httpx, each client alternating); one alone gives its "
        "own CPU per request",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="the load generator: wrk (installed when missing), or the asyncio + httpx "
        "clients in this process, which take a core of their own; auto: wrk, httpx when "
        "wrk cannot be had",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - {"status", "list"}:
        parser.error("--kinds: status, list or status,list")
    wrk = None
    if args.generator != "httpx":
        try:
            wrk = ensure_wrk(log)
        except WrkUnavailable as exc:
            if args.generator == "wrk":
                parser.error(str(exc))
            log(f"bench: {exc}; the load comes from httpx in this process instead")
    generator = "wrk" if wrk else "httpx"
    run_dir = WORK / "scratch" / f"load-{os.getpid()}"
    with database(args.db) as env, gateway(run_dir / "data", env, args.workers) as (base, pid):
        me = psutil.Process()
        # The gateway's own CPU while nobody calls it (its background work, idle workers, the
        # supervisor): subtracted for the net CPU per request, since at the few tens of
        # requests a second a loaded machine allows it is a good part of the total.
        idle_from, idle_cpu = time.monotonic(), tree_cpu(pid)
        time.sleep(args.idle)
        idle_rate = (tree_cpu(pid) - idle_cpu) / (time.monotonic() - idle_from)
        # The generator's CPU: this process's, and its waited-for children's (the wrk runs;
        # the gateway, a child too, is only waited for at the end).
        cpu_gateway, cpu_me = tree_cpu(pid), sum(me.cpu_times()[:2]) + children_cpu()
        started = time.monotonic()
        if wrk:
            result = load_wrk(base, wrk=wrk, clients=args.clients, seconds=args.seconds,
                              warmup=args.warmup, uploads=args.uploads, kinds=kinds)  # fmt: skip
        else:
            result = asyncio.run(
                load_httpx(
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
        result["generator_cpu_seconds"] = sum(me.cpu_times()[:2]) + children_cpu() - cpu_me
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
    } | {"generator": generator}
    result["load_average"] = os.getloadavg()
    log(
        f"{args.db}, {args.workers} worker(s), {args.clients} clients, {args.seconds:g} s, "
        f"generator {generator} "
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
