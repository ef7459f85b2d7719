"""SHA-256 of local files: streaming, in worker threads, cached across runs.

The cache is a small SQLite file in the state directory keyed by (absolute path or archive
member, size, mtime_ns): a re-run over an unchanged 2 GB study hashes nothing. It holds file
paths and hashes, no other PHI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from relaypacs.client.errors import InputError

__all__ = ["HashCache", "HashJob", "Hasher", "hash_file", "hash_files", "study_hash"]

_READ_SIZE = 1024 * 1024
# Entries not used for this long are dropped, so the cache does not grow for ever.
_PRUNE_AFTER_S = 90 * 24 * 3600


def study_hash(file_hashes: Iterable[str]) -> str:
    """SHA-256 (hex) of the sorted per-file SHA-256 hex strings joined with ``\\n``."""
    joined = "\n".join(sorted(file_hashes))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


_buffers = threading.local()


def _read_buffer() -> memoryview:
    """This thread's read buffer, made once: a new 1 MiB buffer per file is a fresh memory
    mapping, zeroed and faulted in page by page, which cost as much as hashing a CT slice."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(_READ_SIZE))
    return view


def hash_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Stream ``path`` through SHA-256 with a bounded buffer."""
    digest = hashlib.sha256()
    view = _read_buffer()
    with path.open("rb", buffering=0) as stream:
        while True:
            n = stream.readinto(view)
            if not n:
                break
            digest.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class HashJob:
    """One file to hash.

    ``key`` identifies the content's origin across runs: the absolute path for a plain file,
    ``<zip path>!<member>`` for a file extracted from an archive (whose temporary path changes
    every run). ``size`` and ``mtime_ns`` are those of the origin. When ``path`` is the origin
    (``same_file``), a file modified while it was hashed is not cached.
    """

    path: Path
    key: str
    size: int
    mtime_ns: int
    same_file: bool = True


class HashCache:
    """SHA-256 per (key, size, mtime_ns) in a SQLite file; safe against concurrent runs."""

    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db_path.touch(mode=0o600, exist_ok=True)
        self._conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # A cache: losing the last entries in a power cut is fine, an fsync per file is not.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS file_hash ("
            " key TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
            " sha256 TEXT NOT NULL, used_at REAL NOT NULL)"
        )
        self.hits = 0
        self.misses = 0

    def get(self, key: str, size: int, mtime_ns: int) -> str | None:
        row = self._conn.execute(
            "SELECT sha256 FROM file_hash WHERE key = ? AND size = ? AND mtime_ns = ?",
            (key, size, mtime_ns),
        ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return str(row[0])

    def put(self, key: str, size: int, mtime_ns: int, sha256: str) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO file_hash (key, size, mtime_ns, sha256, used_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (key, size, mtime_ns, sha256, time.time()),
        )

    def touch(self, keys: Sequence[str]) -> None:
        """Mark entries as used now, and drop the ones unused for months."""
        now = time.time()
        with self._transaction():
            self._conn.executemany(
                "UPDATE file_hash SET used_at = ? WHERE key = ?", [(now, k) for k in keys]
            )
            self._conn.execute("DELETE FROM file_hash WHERE used_at < ?", (now - _PRUNE_AFTER_S,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def hash_files(
    jobs: Sequence[HashJob],
    *,
    cache: HashCache | None = None,
    workers: int = 4,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """SHA-256 of every job (by key), cache first, the rest in up to ``workers`` threads.

    Each result is written to the cache as soon as it is known, so a run killed half-way keeps
    what it hashed.
    """
    hasher = Hasher(cache=cache, workers=workers, on_bytes=on_bytes)
    for job in jobs:
        hasher.add(job)
    return await hasher.results()


class Hasher:
    """hash_files for jobs that arrive one by one (as discovery finds the files): each starts
    as soon as it is added, while the rest is still being found. Call :meth:`results` once
    every job is added, or :meth:`cancel`.

    The jobs go straight to a pool of ``workers`` threads of its own: no task, semaphore or
    context copy per file on the event loop, which discovery keeps busy meanwhile.
    """

    def __init__(
        self,
        *,
        cache: HashCache | None = None,
        workers: int = 4,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self._cache = cache
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="relaypacs-hash")
        self._on_bytes = on_bytes
        self._report: Callable[[int], None] | None = None
        if on_bytes is not None:
            loop = self._loop
            callback = on_bytes

            def report(n: int) -> None:
                # Called from a worker thread: hand the count to the event loop's thread.
                loop.call_soon_threadsafe(callback, n)

            self._report = report
        self._results: dict[str, str] = {}
        self._keys: list[str] = []
        self._futures: list[tuple[str, Future[str]]] = []  # (key, its SHA-256)

    def add(self, job: HashJob) -> None:
        self._keys.append(job.key)
        cache = self._cache
        cached = cache.get(job.key, job.size, job.mtime_ns) if cache is not None else None
        if cached is not None:
            self._results[job.key] = cached
            if self._on_bytes is not None:
                self._on_bytes(job.size)
            return
        self._futures.append((job.key, self._pool.submit(self._hash, job)))

    def _hash(self, job: HashJob) -> str:
        """In a pool thread. The result goes to the cache (on the event loop's thread, whose
        connection it is) as soon as it is known: a run killed half-way keeps it."""
        digest = hash_file(job.path, self._report)
        if self._cache is not None and (not job.same_file or _unchanged(job)):
            self._loop.call_soon_threadsafe(self._keep, job, digest)
        return digest

    def _keep(self, job: HashJob, digest: str) -> None:
        if self._cache is not None:
            self._cache.put(job.key, job.size, job.mtime_ns, digest)

    async def results(self) -> dict[str, str]:
        """Every job's SHA-256 by key. InputError for a file that cannot be read (the other
        hashes are stopped)."""
        try:
            if self._futures:
                waiting = [asyncio.wrap_future(f) for _, f in self._futures]
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_EXCEPTION)
                errors = [f.exception() for f in done if not f.cancelled()]
                first = next((e for e in errors if e is not None), None)
                if first is not None:
                    if isinstance(first, OSError):
                        raise InputError(
                            f"cannot read {first.filename}: {first.strerror}"
                        ) from first
                    raise first
                for key, future in self._futures:
                    self._results[key] = future.result()
        except BaseException:
            self.cancel()
            raise
        self._pool.shutdown(wait=False)
        if self._cache is not None:
            self._cache.touch(self._keys)
        return self._results

    def cancel(self) -> None:
        """Stop: files not started are not hashed (one being hashed finishes in its thread)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _unchanged(job: HashJob) -> bool:
    try:
        st = job.path.stat()
    except OSError:
        return False
    return st.st_size == job.size and st.st_mtime_ns == job.mtime_ns
