"""SSE fan-out benchmark: many concurrent event streams (GET /notifications/stream) on one
gateway process, one notification each: delivery latency P50/P95/P99 and the gateway's RSS per
idle connection; with --replicas, the streams on one replica and the notifications raised on
another, through Redis pub/sub (PostgreSQL shared).

    uv run python -m bench.sse_fanout                  # 2,000 streams, one process (SQLite)
    uv run python -m bench.sse_fanout --replicas       # the same across two replicas
    uv run python -m bench.sse_fanout --clients 200    # a smoke run

Streams are spread over `--users` radiologists (each user's notice reaches all their streams);
each notice is a report assigned to that radiologist by an administrator, one after the other.
Latency is from the moment the assignment's request is sent to the moment a stream reads the
event (an upper bound of commit-to-screen: it includes the request and its commit). Goals
(issue 13): P95 under 250 ms and under 20 KiB per idle connection on one process; under 100 ms
added across replicas. Not a test: it asserts nothing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.db import Database
from tests.gateway import run_gateway
from tests.notifications.live import open_report_of, upload_study
from tests.security.live import LiveAccount
from tests.servers import redis_server

PASSWORD = "sse fan-out bench password"
API = "/api/v1"
KiB = 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def gateway_pid(base: str) -> int:
    port = int(base.rsplit(":", 1)[1])
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if "serve" in cmdline and str(port) in cmdline:
            return process.pid
    raise RuntimeError("the gateway process was not found")


async def make_accounts(database_url: str, users: int) -> dict[str, tuple[str, Role]]:
    suffix = uuid.uuid4().hex[:6]
    names = {f"clin-{suffix}": Role.CLINICIAN, f"admin-{suffix}": Role.ADMIN}
    names |= {f"radio{i}-{suffix}": Role.RADIOLOGIST for i in range(users)}
    db = Database.open(database_url)
    try:
        for name, role in names.items():
            async with db.sessionmaker() as session, session.begin():
                await create_user(session, username=name, password=PASSWORD, role=role)
    finally:
        await db.close()
    return {name: (name, role) for name, role in names.items()}


def login(base: str, username: str) -> LiveAccount:
    response = httpx.post(
        f"{base}{API}/auth/login", json={"username": username, "password": PASSWORD}
    )
    response.raise_for_status()
    token = response.json()["access_token"]
    me = httpx.get(f"{base}{API}/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    return LiveAccount(username, me["role"], me["id"], token)


class Stream:
    """One raw HTTP/1.1 SSE connection (no client library: 2,000 of them on one core)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.received_at: float | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, host: str, port: int) -> asyncio.StreamReader:
        reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(
            f"GET {API}/notifications/stream HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await self.writer.drain()
        while True:  # until the server subscribed (its `retry:` line)
            line = await reader.readline()
            if not line:
                raise RuntimeError("the stream closed before it opened")
            if line.startswith(b"retry:"):
                return reader

    async def wait_event(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"event: notification"):
                self.received_at = time.perf_counter()
                return

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run(args: argparse.Namespace, bases: list[str], database_url: str) -> dict[str, float]:
    accounts = await make_accounts(database_url, args.users)
    logged = {name: login(bases[0], name) for name in accounts}
    clinician = next(a for a in logged.values() if a.role == "clinician")
    admin = next(a for a in logged.values() if a.role == "admin")
    radiologists = [a for a in logged.values() if a.role == "radiologist"]
    reports = []
    for _ in radiologists:
        upload_id = await asyncio.to_thread(upload_study, bases[0], clinician)
        reports.append(await open_report_of(database_url, upload_id))

    stream_base, trigger_base = bases[-1], bases[0]
    host, port = stream_base.removeprefix("http://").split(":")
    pid = gateway_pid(stream_base)
    await asyncio.sleep(1.0)
    rss_before = psutil.Process(pid).memory_info().rss
    streams = [Stream(radiologists[i % len(radiologists)].token) for i in range(args.clients)]
    gate = asyncio.Semaphore(64)

    async def opened(stream: Stream) -> asyncio.StreamReader:
        async with gate:
            return await stream.open(host, int(port))

    started = time.perf_counter()
    readers = await asyncio.gather(*(opened(s) for s in streams))
    open_seconds = time.perf_counter() - started
    await asyncio.sleep(2.0)
    rss_idle = psutil.Process(pid).memory_info().rss
    waiting = [asyncio.create_task(s.wait_event(r)) for s, r in zip(streams, readers, strict=True)]

    sent_at: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=trigger_base, headers=admin.headers, timeout=60) as http:

        async def assign(radiologist: LiveAccount, report_id: str) -> None:
            sent_at[radiologist.token] = time.perf_counter()
            response = await http.post(
                f"{API}/admin/reports/{report_id}/assign",
                json={"radiologist_id": radiologist.id},
            )
            response.raise_for_status()

        # One after the other: each notice's latency is its own request, commit and fan-out
        # to its user's streams, not the queue of the others' writes.
        for radiologist, report_id in zip(radiologists, reports, strict=True):
            await assign(radiologist, report_id)
            await asyncio.sleep(args.gap)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.gather(*waiting)
    latencies = [
        (s.received_at - sent_at[s.token]) * 1000 for s in streams if s.received_at is not None
    ]
    for s in streams:
        s.close()
    return {
        "clients": args.clients,
        "delivered": len(latencies),
        "open_seconds": open_seconds,
        "p50_ms": percentile(latencies, 50) if latencies else float("nan"),
        "p95_ms": percentile(latencies, 95) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "rss_before_mib": rss_before / (1 << 20),
        "rss_idle_mib": rss_idle / (1 << 20),
        "kib_per_idle_connection": (rss_idle - rss_before) / KiB / args.clients,
    }


@contextlib.contextmanager
def gateways(root: Path, replicas: bool) -> Iterator[tuple[list[str], str]]:
    env = {
        "RELAYPACS_SECRET_KEY": "sse-bench-signing-key-" + "b" * 32,
        "RELAYPACS_TOTP_REQUIRED_ROLES": "[]",
        "RELAYPACS_CHUNK_SIZE": str(256 * 1024),
        "RELAYPACS_RATE_LIMIT_LOGIN_IP": "100000/minute",
        "RELAYPACS_LOG_LEVEL": "warning",
    }
    with contextlib.ExitStack() as stack:
        if replicas:
            from tests.conftest import POSTGRES_ADMIN_URL, _psql

            name = f"relaypacs_bench_{uuid.uuid4().hex[:8]}"
            _psql(f"CREATE DATABASE {name}")
            stack.callback(_psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            url = POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://") + "/" + name
            redis = stack.enter_context(redis_server())
            env |= {"RELAYPACS_DATABASE_URL": url, "RELAYPACS_REDIS_URL": redis.url}
            count = 2
        else:
            url = f"sqlite+aiosqlite:///{root / 'gateway.db'}"
            env |= {"RELAYPACS_DATABASE_URL": url}
            count = 1
        bases = [
            stack.enter_context(
                run_gateway(root / f"replica{i}", env, log_path=root / f"replica{i}.log")
            )
            for i in range(count)
        ]
        yield bases, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--replicas", action="store_true")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between notices")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="sse-bench-") as tmp,
        gateways(Path(tmp), args.replicas) as (bases, url),
    ):
        result = asyncio.run(run(args, bases, url))
    where = "two replicas through Redis" if args.replicas else "one process"
    print(
        f"SSE fan-out, {where}: {result['delivered']}/{result['clients']} streams got their event"
    )
    print(f"  streams opened in {result['open_seconds']:.2f} s")
    print(
        f"  latency ms: p50 {result['p50_ms']:.1f}  p95 {result['p95_ms']:.1f}  "
        f"p99 {result['p99_ms']:.1f}  mean {result['mean_ms']:.1f}"
    )
    print(
        f"  gateway RSS: {result['rss_before_mib']:.1f} MiB before, "
        f"{result['rss_idle_mib']:.1f} MiB with the streams idle: "
        f"{result['kib_per_idle_connection']:.1f} KiB per idle connection"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
