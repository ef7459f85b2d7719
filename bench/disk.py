"""Disk baseline: the study's bytes written to new files on the same filesystem, with fsync."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.results import Measurement

BLOCK = 8 << 20  # 8 MiB: the gateway's default chunk size and the tus client's chunk size

_local = threading.local()


def _buffer() -> memoryview:
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = memoryview(bytearray(BLOCK))
        _local.buf = buf
    return buf


def write_all(fd: int, data: memoryview) -> None:
    """os.write until every byte is written (a write may take fewer)."""
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_one(src: Path, dst: Path) -> int:
    buf = _buffer()
    total = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with src.open("rb", buffering=0) as handle:
            while n := handle.readinto(buf):
                write_all(fd, buf[:n])
                total += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return total


def fsync_per_file(files: Sequence[Path], dest: Path, parallel: int = 1) -> tuple[float, int]:
    """Copy every file to a new file in `dest` and fsync it; `parallel` files in flight.

    Returns (seconds, bytes). The directory is fsynced once at the end.
    """
    dest.mkdir(parents=True)
    started = time.perf_counter()
    if parallel <= 1:
        total = sum(_copy_one(src, dest / f"{i:06d}.dcm") for i, src in enumerate(files))
    else:
        with ThreadPoolExecutor(parallel) as pool:
            total = sum(
                pool.map(
                    lambda item: _copy_one(item[1], dest / f"{item[0]:06d}.dcm"), enumerate(files)
                )
            )
    _fsync_dir(dest)
    return time.perf_counter() - started, total


def _stream(files: Sequence[Path]) -> Iterator[memoryview]:
    buf = memoryview(bytearray(BLOCK))
    for src in files:
        with src.open("rb", buffering=0) as handle:
            while n := handle.readinto(buf):
                yield buf[:n]


def fsync_per_block(files: Sequence[Path], dest: Path, block: int = BLOCK) -> tuple[float, int]:
    """Write the files' bytes, back to back, as new `block`-sized segment files, one fsync each.

    The fewest fsyncs any store that keeps 8 MiB chunks durable can do: the large-write limit.
    """
    dest.mkdir(parents=True)
    started = time.perf_counter()
    total = 0
    segment = 0
    fd = -1
    filled = 0
    try:
        for piece in _stream(files):
            while piece:
                if fd < 0:
                    fd = os.open(
                        dest / f"seg{segment:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
                    )
                    segment += 1
                    filled = 0
                take = min(len(piece), block - filled)
                write_all(fd, piece[:take])
                piece = piece[take:]
                filled += take
                total += take
                if filled == block:
                    os.fsync(fd)
                    os.close(fd)
                    fd = -1
        if fd >= 0:
            os.fsync(fd)
            os.close(fd)
            fd = -1
    finally:
        if fd >= 0:
            os.close(fd)
    _fsync_dir(dest)
    return time.perf_counter() - started, total


def settle(*paths: Path) -> None:
    """Remove scratch outputs and flush the page cache's dirty pages before the next contender."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    os.sync()
    time.sleep(0.5)


def measure(
    name: str,
    files: Sequence[Path],
    total_bytes: int,
    scratch: Path,
    *,
    mode: str,
    parallel: int,
    repeat: int,
) -> Measurement:
    """`mode` "file": one fsync per file; "block": one fsync per 8 MiB segment."""
    result = Measurement(name=name, kind="disk", bytes=total_bytes, files=len(files))
    if mode == "file":
        result.note = f"new file per instance, fsync each, {parallel} in flight"
    else:
        result.note = "same bytes as new 8 MiB files, fsync each"
    for i in range(repeat):
        dest = scratch / f"disk-{mode}-{parallel}-{i}"
        settle(dest)
        if mode == "file":
            seconds, written = fsync_per_file(files, dest, parallel)
        else:
            seconds, written = fsync_per_block(files, dest)
        settle(dest)
        if written != total_bytes:
            result.error = f"wrote {written} bytes, expected {total_bytes}"
            break
        result.seconds.append(seconds)
    return result
