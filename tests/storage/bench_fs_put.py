"""Put throughput of FilesystemStorage against a plain write+fsync loop (not a test).

Run: ``uv run python -m tests.storage.bench_fs_put [--dir DIR] [--mib 256]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from relaypacs.storage import FilesystemStorage

KIB = 1024
MIB = 1024 * KIB


def plain_write_fsync(path: Path, data: bytes) -> None:
    """The baseline: one file, written and fsynced; no temp file, rename or directory sync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def chunk_key(upload: str, index: int, data: bytes) -> str:
    """The gateway's layout: one directory per file, one object per chunk."""
    return f"uploads/{upload}/{index}/0-{hashlib.md5(data).hexdigest()}"


Case = tuple[str, Callable[[int], Coroutine[Any, Any, None]]]


def cases(
    base: Path, store: FilesystemStorage, data: bytes, count: int, threads: int
) -> list[Case]:
    """Each case writes ``count`` objects of ``data``; its argument makes names unique per round."""

    async def plain_sequential(round_: int) -> None:
        directory = base / f"plain-{len(data)}-{round_}"
        directory.mkdir()
        for i in range(count):
            plain_write_fsync(directory / f"{i}", data)

    async def plain_threads(round_: int) -> None:
        directory = base / f"plain-threads-{len(data)}-{round_}"
        directory.mkdir()
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(threads) as pool:
            await asyncio.gather(
                *(
                    loop.run_in_executor(pool, plain_write_fsync, directory / f"{i}", data)
                    for i in range(count)
                )
            )

    async def put_one_directory(round_: int) -> None:
        for i in range(count):
            await store.put(f"same-{round_}/{i}", data)

    async def put_chunk_layout(round_: int) -> None:
        upload = uuid.uuid4().hex
        for i in range(count):
            await store.put(chunk_key(upload, i, data), data)

    async def put_chunk_layout_concurrent(round_: int) -> None:
        upload = uuid.uuid4().hex
        limit = asyncio.Semaphore(threads)

        async def put(i: int) -> None:
            async with limit:
                await store.put(chunk_key(upload, i, data), data)

        await asyncio.gather(*(put(i) for i in range(count)))

    return [
        ("plain write+fsync, 1 at a time", plain_sequential),
        ("put, 1 at a time, one directory", put_one_directory),
        ("put, 1 at a time, new dir per file", put_chunk_layout),
        (f"plain write+fsync, {threads} threads", plain_threads),
        (f"put, {threads} at a time, new dir per file", put_chunk_layout_concurrent),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    parser.add_argument("--mib", type=int, default=128, help="MiB written per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-fs-put-") as tmp:
        base = Path(tmp)
        async with FilesystemStorage(base / "store") as store:
            for size in (512 * KIB, 8 * MIB):
                count = max(4, args.mib * MIB // size)
                data = os.urandom(size)
                print(f"\n{size // KIB} KiB objects x {count} per case, median of {args.rounds}")
                runs = cases(base, store, data, count, args.concurrency)
                seconds: dict[str, list[float]] = {label: [] for label, _ in runs}
                for round_ in range(args.rounds):  # interleaved, so load spikes hit every case
                    for label, run in runs:
                        started = time.perf_counter()
                        await run(round_)
                        seconds[label].append(time.perf_counter() - started)
                for label, times in seconds.items():
                    median = statistics.median(times)
                    rate = count * size / MIB / median
                    print(f"  {label:<40} {rate:8.1f} MiB/s {count / median:8.1f} puts/s")


if __name__ == "__main__":
    asyncio.run(main())
