"""`slowclients`: many slow-body clients hold connections while `/health/live` stays fast and
an ordinary client can still upload.

Each round: CLIENTS connections (drawn from 64-256, bounded) each start a chunk PUT of a real
upload (valid token, right path, `Content-Length` of a whole chunk) and then send its body one
byte every 0.5 s, holding the connection for HOLD seconds; meanwhile `/health/live` is probed
(a new connection each time, as an orchestrator's probe) and an ordinary client uploads a
small study chunk by chunk. Printed: the probes' P50/P95/P99 (must be under 100 ms) and how
long the ordinary upload's chunk PUTs took. Counted: a P99 of 100 ms or more (limits missed),
an ordinary upload that did not complete (stuck), a probe not answered 200 (unexpected)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import socket
import statistics
import tempfile
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import httpx

from chaos.common import (
    CHUNK,
    LOOPBACK,
    Client,
    ScenarioError,
    Tally,
    make_study,
    new_gateway,
)

HOLD_SECONDS = 8.0
P99_LIMIT_MS = 100.0
PROBE_INTERVAL = 0.02


async def _slow_client(port: int, path: str, token: str, stop: asyncio.Event) -> str:
    """One connection sending a chunk's body a byte at a time until ``stop``; what happened
    to it (``held``, ``closed by the gateway``, ``answered <status>``)."""
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError as exc:
        return f"refused ({type(exc).__name__})"
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {CHUNK}\r\n"
        "Content-MD5: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"
    )
    outcome = "held"
    try:
        writer.write(head.encode())
        await writer.drain()
        while not stop.is_set():
            writer.write(b"\0")
            await writer.drain()
            try:
                first = await asyncio.wait_for(reader.read(64), timeout=0.5)
            except TimeoutError:
                continue
            if not first:
                outcome = "closed by the gateway"
            else:
                outcome = "answered " + first.split(b" ", 2)[1].decode(errors="replace")
            break
    except (ConnectionError, OSError):
        outcome = "closed by the gateway"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return outcome


def _hold(
    outcomes: Queue[dict[str, int]],
    connected: EventType,
    count: int,
    port: int,
    paths: list[str],
    token: str,
    seconds: float,
) -> None:
    """``count`` slow clients for ``seconds`` (in a process of their own: the probes' timing
    does not share an interpreter with them); ``connected`` set once they all sent their
    headers; what became of them put in ``outcomes``."""

    async def main() -> list[str]:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_slow_client(port, paths[i % len(paths)], token, stop))
            for i in range(count)
        ]
        await asyncio.sleep(0.5)
        connected.set()
        await asyncio.sleep(seconds)
        stop.set()
        return list(await asyncio.gather(*tasks))

    counted: dict[str, int] = {}
    for outcome in asyncio.run(main()):
        counted[outcome] = counted.get(outcome, 0) + 1
    outcomes.put(counted)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(rounds: int, seed: int) -> Tally:
    tally = Tally("slowclients", seed)
    probes_all: list[float] = []
    uploads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="relaypacs-chaos-slow-") as tmp:
        work = Path(tmp)
        gateway = new_gateway(work)
        gateway.start()
        try:
            quiet = _baseline(gateway.port)
            tally.figures["/health/live P50 / P99 without slow clients (ms)"] = (
                f"{statistics.median(quiet):.1f} / {_percentile(quiet, 0.99):.1f}"
            )
            alone: list[float] = []
            _ordinary_upload(alone, work, -1, gateway.base_url, seed)
            if alone:
                tally.figures["ordinary upload, seconds of its chunk PUTs without slow clients"] = (
                    round(alone[0], 2)
                )
            for number in range(rounds):
                round_seed = seed * 100_000 + number
                rng = random.Random(round_seed)
                count = rng.randint(64, 256)
                # The slow clients write chunks of an upload of their own (its account).
                victim = Client(gateway.base_url)
                bait = make_study(work / f"bait-{number}", instances=4, side=384, seed=round_seed)
                created = victim.start(bait)
                if created.status_code != 201:
                    raise ScenarioError(f"upload refused: {created.status_code}")
                upload_id = created.json()["id"]
                paths = [
                    f"/api/v1/uploads/{upload_id}/files/{f}/chunks/{c}"
                    for f, c, body in bait.chunks()
                    if len(body) == CHUNK
                ]
                token = str(victim.http.headers["Authorization"]).split()[1]
                spawn = multiprocessing.get_context("spawn")
                connected = spawn.Event()
                outcomes: Queue[dict[str, int]] = spawn.Queue()
                uploads_now: list[float] = []
                holder = spawn.Process(
                    target=_hold,
                    args=(outcomes, connected, count, gateway.port, paths, token, HOLD_SECONDS),
                    daemon=True,
                )
                holder.start()
                if not connected.wait(60):
                    raise ScenarioError("the slow clients did not connect")
                probes: list[float] = []
                ordinary = threading.Thread(
                    target=_ordinary_upload,
                    args=(uploads_now, work, number, gateway.base_url, round_seed),
                    daemon=True,
                )
                ordinary.start()
                deadline = time.monotonic() + HOLD_SECONDS - 2.0
                while time.monotonic() < deadline:
                    took, status = _probe(gateway.port)
                    probes.append(took)
                    if status != 200:
                        tally.unexpected += 1
                        tally.note(f"/health/live answered {status}")
                    time.sleep(PROBE_INTERVAL)
                held = outcomes.get(timeout=HOLD_SECONDS + 30)
                holder.join(30)
                ordinary.join(60)
                upload_seconds = uploads_now.pop() if uploads_now else None
                victim.close()
                probes_all += probes
                if upload_seconds is None:
                    tally.stuck += 1
                    tally.note(f"round seed {round_seed}: the ordinary upload did not complete")
                else:
                    uploads.append(upload_seconds)
                p99 = _percentile(probes, 0.99)
                print(
                    f"round {number + 1}/{rounds} seed {round_seed}: {count} slow clients "
                    f"({held}); /health/live over {len(probes)} probes P50 "
                    f"{statistics.median(probes):.1f} ms, P99 {p99:.1f} ms; "
                    "ordinary upload's chunks "
                    + (f"{upload_seconds:.2f} s" if upload_seconds is not None else "STUCK"),
                    flush=True,
                )
                tally.rounds += 1
        finally:
            gateway.stop()
    if probes_all:
        p99 = _percentile(probes_all, 0.99)
        tally.figures["/health/live probes"] = len(probes_all)
        tally.figures["/health/live P50 / P95 / P99 (ms)"] = (
            f"{statistics.median(probes_all):.1f} / {_percentile(probes_all, 0.95):.1f} / {p99:.1f}"
        )
        if p99 >= P99_LIMIT_MS:
            tally.limits_missed += 1
            tally.note(f"/health/live P99 {p99:.1f} ms is not under {P99_LIMIT_MS:.0f} ms")
    if uploads:
        tally.figures["ordinary upload, seconds of its chunk PUTs (max)"] = round(max(uploads), 2)
    return tally


def _probe(port: int) -> tuple[float, int]:
    """One `GET /health/live` on a new connection, as an orchestrator's probe: milliseconds
    from connecting to the whole answer, and its status (a raw socket: the client's own cost
    is not measured)."""
    began = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(
            f"GET /health/live HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    took = (time.perf_counter() - began) * 1000
    try:
        status = int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return took, status


def _baseline(port: int, count: int = 100) -> list[float]:
    probes = []
    for _ in range(count):
        probes.append(_probe(port)[0])
        time.sleep(PROBE_INTERVAL)
    return probes


def _ordinary_upload(
    result: list[float], work: Path, number: int, base_url: str, seed: int
) -> None:
    """A small study uploaded chunk by chunk while the slow clients hold on; the seconds its
    chunk PUTs took appended to ``result`` if it then completed."""
    study = make_study(work / f"ordinary-{number}", instances=2, side=128, seed=seed + 7)
    client = Client(base_url, timeout=HOLD_SECONDS + 30)
    try:
        created = client.start(study)
        upload_id = created.json()["id"]
        began = time.monotonic()
        for f, c, body in study.chunks():
            if client.put(upload_id, f, c, body).status_code != 200:
                return
        took = time.monotonic() - began
        if client.complete(upload_id).status_code != 202:
            return
    except httpx.TimeoutException:
        return
    finally:
        client.close()
    result.append(took)
