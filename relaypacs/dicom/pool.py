"""A pool of worker processes that run :func:`relaypacs.dicom.inspect.inspect_file`.

:class:`DicomValidator` runs each inspection in a worker process whose address space is capped
and whose calls have a wall-time limit, so that a hostile file cannot exhaust the serving
process. Nothing here knows about HTTP or the database.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from relaypacs.dicom.inspect import RESOURCE_LIMIT, DicomLimits, DicomRejected, DicomSummary

logger = logging.getLogger(__name__)

__all__ = ["DicomValidator"]

_WORKER_START_TIMEOUT: Final = 60.0
_WORKER_STOP_TIMEOUT: Final = 5.0
_WORKER_MODULE: Final = "relaypacs.dicom._worker"
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])
"""Put on the workers' PYTHONPATH, so that they import this very code."""


class _WorkerDied(Exception):
    pass


class _Worker:
    """One worker process, speaking JSON lines on its stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, message: object) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise _WorkerDied from exc

    async def receive(self) -> Any:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            line = await stdout.readline()
        except (ConnectionError, ValueError) as exc:
            raise _WorkerDied from exc
        if not line:
            raise _WorkerDied
        try:
            return json.loads(line)
        except ValueError as exc:  # not the protocol: treat the worker as broken
            raise _WorkerDied from exc

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        """Ask the worker to exit (EOF on its stdin), kill it if it does not."""
        stdin = self.process.stdin
        if stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                stdin.close()
        try:
            async with asyncio.timeout(_WORKER_STOP_TIMEOUT):
                await self.process.wait()
        except TimeoutError:
            await self.kill()


def _worker_error(kind: str, errno: int | None, message: str) -> Exception:
    error_type = getattr(builtins, kind, None)
    if isinstance(error_type, type) and issubclass(error_type, OSError):
        return error_type(errno, message) if errno is not None else error_type(message)
    return RuntimeError(f"DICOM validation worker failed: {kind}: {message}")


def _decode(reply: dict[str, Any]) -> tuple[DicomSummary | Exception, bool]:
    """A worker's answer for one file: the summary or the exception to raise (DicomRejected,
    an OSError, RuntimeError), and whether the worker may be used again."""
    if "ok" in reply:
        return DicomSummary(**reply["ok"]), True
    if "rejected" in reply:
        code, message = reply["rejected"]
        return DicomRejected(code, message), code != RESOURCE_LIMIT  # recycle after MemoryError
    kind, errno, message = reply["error"]
    return _worker_error(kind, errno, message), True


@dataclass
class _Lease:
    worker: _Worker
    healthy: bool = False


class DicomValidator:
    """Runs :func:`inspect_file` in a pool of worker processes.

    Each worker is a separate Python process (``python -m relaypacs.dicom._worker``:
    nothing of the serving process is inherited or re-imported) whose address space is
    capped with ``setrlimit(RLIMIT_AS, memory_bytes)``; each call has a wall-time limit
    (``timeout_seconds``). So a hostile file can never exhaust the serving process. A
    worker that dies, runs out of memory or times out is killed and replaced -- only that
    one: files being inspected by the other workers are not affected -- and its file gets
    ``DicomRejected("dicom_resource_limit", ...)``.

    Workers start on first use (or with :meth:`start`). At most ``workers`` files are
    inspected at once; further calls wait for a free worker. With ``idle_seconds``, workers
    that have had nothing to do for that long are stopped (they hold ~60 MiB each) and start
    again on the next file.
    """

    def __init__(
        self,
        limits: DicomLimits = DicomLimits(),
        workers: int = 2,
        *,
        idle_seconds: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.limits = limits
        self._size = workers
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        self._idle_seconds = idle_seconds
        self._last_used = time.monotonic()
        self._reaper: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None

    @property
    def worker_count(self) -> int:
        return len(self._all)

    def _ensure_reaper(self) -> None:
        if self._idle_seconds is not None and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.create_task(self._reap())

    async def _reap(self) -> None:
        assert self._idle_seconds is not None
        while not self._closed:
            await asyncio.sleep(self._idle_seconds / 2)
            unused = time.monotonic() - self._last_used
            if unused >= self._idle_seconds and len(self._idle) == len(self._all):
                idle, self._idle = self._idle, []
                for worker in idle:
                    self._all.discard(worker)
                await asyncio.gather(*(worker.stop() for worker in idle))
                return  # the next inspection starts workers and this task again

    async def release_idle(self) -> int:
        """Stop the workers now if none is inspecting a file (they start again on the next
        one); returns how many were stopped."""
        if len(self._idle) != len(self._all):
            return 0
        idle, self._idle = self._idle, []
        for worker in idle:
            self._all.discard(worker)
        await asyncio.gather(*(worker.stop() for worker in idle))
        return len(idle)

    def warm(self) -> None:
        """Start one worker in the background if none is running (a study is likely to come:
        an uploader signed in), so that the first file does not wait for its start-up (~0.3 s
        of CPU, mostly importing pydicom). It stops again after `idle_seconds` unused."""
        if self._closed or self._all or (self._warming is not None and not self._warming.done()):
            return
        self._last_used = time.monotonic()
        self._warming = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            worker = await self._start_worker()
        except Exception as exc:  # the first inspection starts one and reports the failure
            logger.warning("could not start a DICOM validation worker ahead of time: %s", exc)
            return
        if self._closed:
            await self._discard(worker)
            return
        self._idle.append(worker)
        self._ensure_reaper()

    async def start(self) -> None:
        """Start all workers now rather than on first use (optional)."""
        self._check_open()
        self._last_used = time.monotonic()
        self._ensure_reaper()
        missing = self._size - len(self._all)
        if missing > 0:
            started = await asyncio.gather(*(self._start_worker() for _ in range(missing)))
            self._idle.extend(started)

    @contextlib.asynccontextmanager
    async def _lease(self, message: str | list[str]) -> AsyncIterator[_Lease]:
        """A worker that has been sent ``message``, for one answer; afterwards it is kept if
        the caller marked the lease healthy, else replaced. At most ``workers`` at once."""
        self._check_open()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        self._last_used = time.monotonic()
        self._ensure_reaper()
        async with self._slots:
            lease = _Lease(await self._acquire(message))
            try:
                yield lease
            finally:
                self._last_used = time.monotonic()
                if lease.healthy and not self._closed:
                    self._idle.append(lease.worker)
                else:
                    await self._discard(lease.worker)

    async def inspect(self, path: Path) -> DicomSummary:
        """Inspect ``path`` in a worker. Raises :class:`DicomRejected`; re-raises
        ``OSError`` from the worker (e.g. ``FileNotFoundError``)."""
        async with self._lease(os.fspath(path)) as lease:
            try:
                async with asyncio.timeout(self.limits.timeout_seconds):
                    reply = await lease.worker.receive()
                result, lease.healthy = _decode(reply)
                if isinstance(result, Exception):
                    raise result
                return result
            except TimeoutError:
                raise DicomRejected(
                    RESOURCE_LIMIT,
                    f"Inspecting the file took longer than {self.limits.timeout_seconds} s.",
                ) from None
            except _WorkerDied:
                if self._closed:  # killed by close(): not the file's fault
                    raise RuntimeError("DicomValidator was closed during the inspection") from None
                raise DicomRejected(
                    RESOURCE_LIMIT,
                    "The validation worker died while inspecting the file "
                    "(memory limit exceeded or crashed).",
                ) from None

    async def inspect_batch(
        self, paths: Sequence[Path]
    ) -> list[DicomSummary | DicomRejected | OSError | None]:
        """Inspect several files in one round trip to one worker: what :meth:`inspect` would
        return or raise for each, in order, or None where the batch cannot tell: a file that
        hit a resource limit (the worker is replaced; :meth:`inspect` on its own says more),
        or every file when the whole batch failed (it took longer than the limit for one
        file, or the worker died). For work that :meth:`inspect` checks again when there is
        no answer (relaypacs.uploads.early): the per-file round trip is most of the serving
        process's cost of a small file."""
        if not paths:
            self._check_open()
            return []
        async with self._lease([os.fspath(p) for p in paths]) as lease:
            try:
                async with asyncio.timeout(self.limits.timeout_seconds):
                    reply = await lease.worker.receive()
            except (TimeoutError, _WorkerDied):
                return [None] * len(paths)
            replies = reply.get("batch") if isinstance(reply, dict) else None
            if not isinstance(replies, list) or len(replies) != len(paths):
                return [None] * len(paths)  # not the protocol: the worker is replaced
            lease.healthy = True
            results: list[DicomSummary | DicomRejected | OSError | None] = []
            for one in replies:
                result, reusable = _decode(one)
                lease.healthy = lease.healthy and reusable
                if isinstance(result, DicomRejected) and result.code == RESOURCE_LIMIT:
                    results.append(None)
                elif isinstance(result, DicomSummary | DicomRejected | OSError):
                    results.append(result)
                else:  # the worker's own failure: inspect() raises it
                    results.append(None)
            return results

    async def close(self) -> None:
        """Stop all workers. The validator cannot be used afterwards."""
        self._closed = True
        for task in (self._reaper, self._warming):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        idle, self._idle = self._idle, []
        busy = self._all - set(idle)
        self._all.clear()
        await asyncio.gather(
            *(worker.stop() for worker in idle), *(worker.kill() for worker in busy)
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("DicomValidator is closed")

    async def _acquire(self, message: str | list[str]) -> _Worker:
        """A live worker that has been sent ``message``: a path, or a batch of paths."""
        if not self._idle and self._warming is not None and not self._warming.done():
            await asyncio.shield(self._warming)  # the worker being started is for this file
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                try:
                    await worker.send(message)
                except _WorkerDied:
                    pass
                else:
                    return worker
            await self._discard(worker)
        worker = await self._start_worker()
        try:
            await worker.send(message)
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _start_worker(self) -> _Worker:
        env = dict(os.environ)
        package_root = _PACKAGE_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            _WORKER_MODULE,
            json.dumps(dataclasses.asdict(self.limits)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = _Worker(process)
        self._all.add(worker)
        try:
            async with asyncio.timeout(_WORKER_START_TIMEOUT):
                hello = await worker.receive()
            if hello != "ready":
                raise _WorkerDied
        except (TimeoutError, _WorkerDied, ValueError) as exc:
            await self._discard(worker)
            raise RuntimeError(
                "A DICOM validation worker failed to start (is memory_bytes too small?)"
            ) from exc
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        await worker.kill()
