"""A minimal HTTP/1.1 layer on asyncio streams (message heads, bodies chunked or not, response
heads), and :class:`BackgroundServer`: an asyncio server on a 127.0.0.1 port chosen by the
kernel, run by its own event loop in a daemon thread, so that synchronous and async tests use
it alike. The recording proxy and the fault PACS are built on it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

LOOPBACK: Final = "127.0.0.1"
HEAD_LIMIT: Final = 1 << 20
_READ_SIZE: Final = 1 << 16


@dataclass
class Head:
    start_line: str
    headers: list[tuple[str, str]]
    raw: bytes

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.get("transfer-encoding") or "").lower()

    @property
    def content_length(self) -> int | None:
        value = self.get("content-length")
        return int(value) if value is not None else None

    def wants_close(self) -> bool:
        connection = (self.get("connection") or "").lower()
        version = (
            self.start_line.split(" ", 1)[0]
            if self.start_line.startswith("HTTP/")
            else (self.start_line.rsplit(" ", 1)[-1])
        )
        if "close" in connection:
            return True
        return version == "HTTP/1.0" and "keep-alive" not in connection


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The start line and headers, or None on a clean end of stream."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            raise
        raw = raw.lstrip(b"\r\n")
        if raw:
            break
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Head(lines[0], headers, raw)


async def iter_body(
    reader: asyncio.StreamReader, head: Head, *, to_eof: bool = False
) -> AsyncIterator[tuple[bytes, bytes]]:
    """(bytes as on the wire, payload bytes) of a message body: chunked, Content-Length, or
    until the end of stream when ``to_eof`` (a response without framing)."""
    if head.chunked:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                trailer = bytearray(line)
                while True:
                    trailer_line = await reader.readuntil(b"\r\n")
                    trailer += trailer_line
                    if trailer_line == b"\r\n":
                        break
                yield bytes(trailer), b""
                return
            data = await reader.readexactly(size)
            crlf = await reader.readexactly(2)
            yield line + data + crlf, data
    length = head.content_length
    if length is not None:
        while length > 0:
            data = await reader.read(min(length, _READ_SIZE))
            if not data:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(data)
            yield data, data
        return
    if to_eof:
        while data := await reader.read(_READ_SIZE):
            yield data, data


def response_has_body(method: str, status_code: int) -> bool:
    return not (method == "HEAD" or 100 <= status_code < 200 or status_code in (204, 304))


def _reason(code: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Status"


def response_head(code: int, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {code} {_reason(code)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class BackgroundServer:
    """An asyncio TCP server on 127.0.0.1 (port chosen by the kernel: no race) run by an event
    loop in a daemon thread. Subclasses implement :meth:`handle` for one connection."""

    name = "server"

    def __init__(self) -> None:
        self.port = 0
        self.errors: list[BaseException] = []
        """Unexpected exceptions in connection handlers (a test may assert it stays empty)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Listen on a port the kernel chooses, or, after :meth:`stop`, on the same port again
        (what was recorded and stored is kept)."""
        if self._loop is not None:
            raise RuntimeError(f"{self.name} is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"{self.name}-{self.port}", daemon=True
        )
        self._thread.start()
        self._call(self._start(sock))

    async def _start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._connection, sock=sock, limit=HEAD_LIMIT)

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 15.0) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _counted(self, stow: bool) -> int:
        """The (STOW-RS, with ``stow``) requests :meth:`wait_for` counts: the subclass says
        which (answered, or arrived)."""
        raise NotImplementedError

    def wait_for(self, count: int, *, stow: bool = True, timeout: float = 10.0) -> None:
        """Block until ``count`` (STOW-RS) requests are counted (:meth:`_counted`)."""
        _wait_sync(lambda: self._counted(stow) >= count, timeout, f"{count} requests")

    async def async_wait_for(self, count: int, *, stow: bool = True, timeout: float = 10.0) -> None:
        await _wait(lambda: self._counted(stow) >= count, timeout, f"{count} requests")

    def stop(self) -> None:
        """Close the listener and every open connection (hanging requests included)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._call(_stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def _wait_sync(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
