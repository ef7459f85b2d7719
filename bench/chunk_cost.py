"""The serving process's cost of one chunk PUT, without network or client:
`python -m bench.chunk_cost [--study-dir DIR] [--files 300] [--parallel 4] [--checksum md5]`.

The gateway app (embedded mode: SQLite, filesystem store, in a temporary data dir) is called
in this process with plain ASGI messages, as uvicorn would call it: one chunk PUT per file of
a CT-like study (512 KB instances by default, generated if no folder is given), `--parallel`
at a time, each with its Content-Digest (sha-256, as the CLI sends it) or, with
`--checksum md5`, its Content-MD5 (as design.md's protocol has it; the server then computes
the SHA-256 too). Printed: wall time per chunk and CPU per chunk (this process, every thread:
the hashing, the fsyncs, the database; not the validation worker process).

Baseline in the same run: a bare Starlette app that reads each body, writes it to a new file
with fsync and answers JSON, i.e. the least any durable chunk endpoint in Python costs here.
The ratio says how much of the gateway's cost is its own checks and records.

This is where the chunk path's profile-guided work is measured (bench/README.md); the
end-to-end figures against a tus peer are `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom

from bench.disk import write_all
from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.devtools.synth import write_study
from relaypacs.main import create_app
from relaypacs.state import app_state

PASSWORD = "chunk cost passphrase 0123"
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "PUT",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


async def _put_all(
    app: ASGIApp, requests: list[tuple[str, list[tuple[bytes, bytes]], bytes]], parallel: int
) -> tuple[float, float, set[int]]:
    """Send every request, `parallel` at a time; (wall s, CPU s, statuses)."""
    statuses: set[int] = set()
    queue = list(reversed(requests))

    async def one(path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # a client that stays connected
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.add(message["status"])

        await app(_scope(path, headers), receive, send)

    async def worker() -> None:
        while queue:
            await one(*queue.pop())

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return time.perf_counter() - wall, time.process_time() - cpu, statuses


def _baseline_app(root: Path) -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def write(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)

    async def put(request: Request) -> JSONResponse:
        data = await request.body()
        name = "-".join(str(v) for v in request.path_params.values())
        await asyncio.to_thread(write, root / name, data)
        return JSONResponse({"size": len(data), "already_stored": False})

    path = "/api/v1/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}"
    return Starlette(routes=[Route(path, put, methods=["PUT"])])


async def measure(study: Path, files: int, parallel: int, checksum: str = "sha256") -> None:
    paths = sorted(p for p in study.iterdir() if p.is_file())[:files]
    blobs = [p.read_bytes() for p in paths]
    uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            totp_required_roles=[],
            secret_key="chunk-cost-signing-key-" + "x" * 32,
            rate_limit_upload_chunk="1000000/minute",
        )
        app = create_app(settings)
        # Not shown: the first start's administrator password (a throw-away data dir).
        quiet = contextlib.redirect_stderr(io.StringIO())
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(quiet)
            await stack.enter_async_context(app.router.lifespan_context(app))
            async with app_state(app).db.sessionmaker() as session, session.begin():
                await create_user(session, username="bench", password=PASSWORD, role=Role.CLINICIAN)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
                login = {"username": "bench", "password": PASSWORD}
                token = (await client.post("/api/v1/auth/login", json=login)).json()
                auth = f"Bearer {token['access_token']}".encode()
                manifest = [
                    {"name": p.name, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                    for p, b in zip(paths, blobs, strict=True)
                ]
                started = await client.post(
                    "/api/v1/uploads",
                    json={"study_instance_uid": uid, "files": manifest},
                    headers={"Authorization": auth.decode()},
                )
                upload_id = started.json()["id"]
            requests = [
                (
                    f"/api/v1/uploads/{upload_id}/files/{i}/chunks/0",
                    [
                        (b"host", b"127.0.0.1:8080"),
                        (b"authorization", auth),
                        _checksum_header(body, checksum),
                        (b"content-length", str(len(body)).encode()),
                        (b"content-type", b"application/octet-stream"),
                    ],
                    body,
                )
                for i, body in enumerate(blobs)
            ]
            gateway = await _put_all(app, requests, parallel)
        root = Path(tmp) / "baseline"
        root.mkdir()
        baseline = await _put_all(_baseline_app(root), requests, parallel)
    n = len(blobs)
    size = sum(len(b) for b in blobs) / n / 1000
    print(
        f"{n} chunk PUTs of {size:.0f} KB, {parallel} at a time, in-process ASGI (no network), "
        f"checksum {checksum}"
    )
    for name, (wall, cpu, statuses) in (("gateway", gateway), ("bare Starlette + fsync", baseline)):
        print(
            f"  {name:24s} wall {wall / n * 1000:5.2f} ms/chunk, CPU {cpu / n * 1000:5.2f} "
            f"ms/chunk, answers {sorted(statuses)}"
        )
    cpu_ratio, wall_ratio = gateway[1] / baseline[1], gateway[0] / baseline[0]
    print(f"  gateway / baseline: CPU {cpu_ratio:.2f}x, wall {wall_ratio:.2f}x")


def _checksum_header(body: bytes, checksum: str) -> tuple[bytes, bytes]:
    if checksum == "md5":
        return b"content-md5", base64.b64encode(hashlib.md5(body).digest())
    return b"content-digest", b"sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()) + b":"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study-dir", type=Path, default=None)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--checksum", choices=["sha256", "md5"], default="sha256")
    args = parser.parse_args()
    study = args.study_dir
    made: Path | None = None
    if study is None:
        made = Path(tempfile.mkdtemp(prefix="chunk-cost-study-"))
        write_study(made, instances=args.files, rows=512, columns=512)
        study = made
    try:
        asyncio.run(measure(study, args.files, args.parallel, args.checksum))
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
