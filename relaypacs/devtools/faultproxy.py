"""A TCP proxy that makes a link bad on purpose: latency, cuts, silent stalls (fault injection
for tests and the benchmark; `tc netem` does not exist on the machines this runs on).

Every connection accepted on ``127.0.0.1:<port>`` (or the address given) is relayed to the
upstream address. What crosses it is counted: ``upstream_bytes`` (client -> server: what the
client's link carried, whether or not the server ever got it).

- ``delay``: one-way latency added to every piece, both directions (the round trip is twice
  it); order is kept.
- ``cut_now()``: every open connection reset at once (RST on both sides, like a NAT or a
  mobile link dropping them); new connections work.
- ``stall_now()``: every open connection stops relaying and is held open, never closed (a link
  that silently stops: no reset ever comes); new connections work.
- ``cut_every``: (min, max) seconds: cut_now at random intervals in that range, like the
  issue's measurements ("all connections cut every 10-20 s"); ``cut_after_bytes``: cut once
  that many more bytes went upstream (deterministic, for tests); the same for stalls with
  ``stall_after_bytes``.

Run alone: ``python -m relaypacs.devtools.faultproxy --listen 127.0.0.1:9000 --upstream
127.0.0.1:8000 --delay-ms 50 --cut-every 10,20``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

__all__ = ["FaultProxy", "ProxyStats"]

_READ = 64 * 1024


@dataclass(slots=True)
class ProxyStats:
    upstream_bytes: int = 0
    downstream_bytes: int = 0
    connections: int = 0
    cuts: int = 0  # cut_now calls that found connections
    connections_cut: int = 0
    connections_stalled: int = 0


@dataclass(slots=True, eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stalled: bool = False


class FaultProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        delay: float = 0.0,
        cut_every: tuple[float, float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.upstream = upstream
        self.listen = listen
        self.delay = delay
        self.cut_every = cut_every
        self.stats = ProxyStats()
        self.cut_after_bytes: int | None = None
        self.stall_after_bytes: int | None = None
        self._random = random.Random(seed)  # noqa: S311 - fault timing, not crypto
        self._links: set[_Link] = set()
        self._stalled: list[_Link] = []
        self._server: asyncio.Server | None = None
        self._cutter: asyncio.Task[None] | None = None
        self.port = 0

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.cut_every is not None:
            self._cutter = asyncio.create_task(self._cut_at_random())

    async def stop(self) -> None:
        if self._cutter is not None:
            self._cutter.cancel()
        if self._server is not None:
            self._server.close()
        for link in [*self._links, *self._stalled]:
            self._reset(link)
        self._links.clear()
        self._stalled.clear()

    def cut_now(self) -> int:
        """Reset every open connection (not the stalled ones); how many there were."""
        links = list(self._links)
        for link in links:
            self._reset(link)
        self._links.clear()
        if links:
            self.stats.cuts += 1
            self.stats.connections_cut += len(links)
        return len(links)

    def stall_now(self) -> int:
        """Stop relaying on every open connection, keeping it open; how many there were."""
        links = list(self._links)
        for link in links:
            link.stalled = True
            for task in link.tasks:
                task.cancel()
            self._stalled.append(link)
        self._links.clear()
        self.stats.connections_stalled += len(links)
        return len(links)

    async def _cut_at_random(self) -> None:
        assert self.cut_every is not None
        low, high = self.cut_every
        while True:
            await asyncio.sleep(self._random.uniform(low, high))
            self.cut_now()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._abort(writer)
            return
        self.stats.connections += 1
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, upstream=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, upstream=False)),
        ]

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send_later(queue, writer))
        try:
            while True:
                data = await reader.read(_READ)
                if not data:
                    break
                if upstream:
                    self.stats.upstream_bytes += len(data)
                    if self._fault_due(len(data)):
                        return
                else:
                    self.stats.downstream_bytes += len(data)
                await queue.put((time.monotonic() + self.delay, data))
            await queue.put((time.monotonic() + self.delay, b""))
            await sender
            sender = None  # type: ignore[assignment]
        except (ConnectionError, OSError):
            if link in self._links:
                self._links.discard(link)
                self._reset(link)
        finally:
            if sender is not None:
                sender.cancel()

    def _fault_due(self, n_bytes: int) -> bool:
        """Count ``n_bytes`` against the armed faults; True when one fired now."""
        if self.cut_after_bytes is not None:
            self.cut_after_bytes -= n_bytes
            if self.cut_after_bytes <= 0:
                self.cut_after_bytes = None
                self.cut_now()
                return True
        if self.stall_after_bytes is not None:
            self.stall_after_bytes -= n_bytes
            if self.stall_after_bytes <= 0:
                self.stall_after_bytes = None
                self.stall_now()
                return True
        return False

    @staticmethod
    async def _send_later(
        queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    def _reset(self, link: _Link) -> None:
        for task in link.tasks:
            task.cancel()
        self._abort(link.client)
        self._abort(link.server)

    @staticmethod
    def _abort(writer: asyncio.StreamWriter) -> None:
        """Close with a reset (SO_LINGER 0), as a dropped link looks to both ends."""
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(args: argparse.Namespace) -> None:
    cut_every = None
    if args.cut_every:
        low, _, high = args.cut_every.partition(",")
        cut_every = (float(low), float(high or low))
    proxy = FaultProxy(
        _address(args.upstream),
        listen=_address(args.listen),
        delay=args.delay_ms / 2000.0,
        cut_every=cut_every,
        seed=args.seed,
    )
    async with proxy:
        print(f"faultproxy: {proxy.address} -> {args.upstream}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="round trip added")
    parser.add_argument("--cut-every", default="", help="MIN,MAX seconds between cuts")
    parser.add_argument("--seed", type=int, default=None)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
