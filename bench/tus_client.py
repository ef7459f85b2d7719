"""Feed a tus server with a study: one tus upload per file, N files in flight.

Run as a subprocess by the benchmark (so that it is timed like the gateway's CLI, from process
start to exit):

    python -m bench.tus_client --endpoint http://127.0.0.1:PORT/files --files-from LIST \
        [--parallel 4] [--chunk-size 8388608] [--impl tuspy|httpx]

Prints one JSON line: {"impl", "files", "bytes", "seconds"} (seconds: the upload loop alone).
`tuspy` is the reference Python tus client (requests, one connection per request);
`httpx` is an equivalent creation + PATCH loop on a kept-alive connection per worker.
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

TUS_VERSION = "1.0.0"


def _tuspy_uploader(endpoint: str, chunk_size: int, retries: int = 0) -> Callable[[Path], int]:
    from tusclient import client as tus_client
    from tusclient.exceptions import TusCommunicationError, TusUploadFailed

    tus = tus_client.TusClient(endpoint)

    def upload(path: Path) -> int:
        uploader = tus.uploader(
            file_path=str(path),
            chunk_size=chunk_size,
            metadata={"filename": path.name},
            # after a failed PATCH: ask the server's offset (HEAD) and go on from there
            retries=retries,
            retry_delay=1,
        )
        for attempt in range(retries + 1):
            try:
                if uploader.url:  # resumed: from the server's offset (HEAD)
                    uploader.offset = uploader.get_offset()
                uploader.upload()
                break
            except (TusCommunicationError, TusUploadFailed, OSError):
                # tuspy retries a failed PATCH itself, not a failed creation or HEAD
                if attempt == retries:
                    raise
                time.sleep(1)
        size: int = uploader.offset
        if size != path.stat().st_size:
            raise RuntimeError(f"{path}: tus offset {size} != size {path.stat().st_size}")
        return size

    return upload


def _httpx_uploader(endpoint: str, chunk_size: int, retries: int = 0) -> Callable[[Path], int]:
    local = threading.local()

    def session() -> httpx.Client:
        http: httpx.Client | None = getattr(local, "http", None)
        if http is None:
            http = httpx.Client(timeout=120.0, headers={"Tus-Resumable": TUS_VERSION})
            local.http = http
        return http

    def upload(path: Path) -> int:
        http = session()
        size = path.stat().st_size
        name = base64.b64encode(path.name.encode()).decode()
        created = http.post(
            endpoint, headers={"Upload-Length": str(size), "Upload-Metadata": f"filename {name}"}
        )
        if created.status_code != 201:
            raise RuntimeError(f"{path}: creation answered {created.status_code}")
        url = str(created.url.join(created.headers["location"]))
        offset = 0
        with path.open("rb") as handle:
            while offset < size:
                chunk = handle.read(chunk_size)
                answer = http.patch(
                    url,
                    content=chunk,
                    headers={
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
                if answer.status_code != 204:
                    raise RuntimeError(f"{path}: PATCH answered {answer.status_code}")
                offset = int(answer.headers["upload-offset"])
        return offset

    return upload


def feed(
    endpoint: str,
    files: Sequence[Path],
    *,
    parallel: int,
    chunk_size: int,
    impl: str,
    retries: int = 0,
) -> tuple[float, int]:
    """Upload every file; return (seconds, bytes)."""
    make = _tuspy_uploader if impl == "tuspy" else _httpx_uploader
    upload = make(endpoint, chunk_size, retries)
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        total = sum(pool.map(upload, files))
    return time.perf_counter() - started, total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tus_client", description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--files-from", type=Path, required=True, help="one path per line")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=8 << 20)
    parser.add_argument("--impl", choices=["tuspy", "httpx"], default="tuspy")
    parser.add_argument("--retries", type=int, default=0, help="tuspy: retries per PATCH")
    args = parser.parse_args(argv)
    files = [Path(line) for line in args.files_from.read_text().splitlines() if line]
    seconds, total = feed(
        args.endpoint,
        files,
        parallel=args.parallel,
        chunk_size=args.chunk_size,
        impl=args.impl,
        retries=args.retries,
    )
    print(json.dumps({"impl": args.impl, "files": len(files), "bytes": total, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
