"""The link to the gateway as the client measures it, and the chunk size fitted to it.

A chunk is all or nothing: when a connection is cut, what of a chunk in flight was sent is
lost and the whole chunk goes again. The bytes a cut costs are therefore about the bytes in
flight, ``parallel`` x the chunk size. The server's chunk size (8 MiB) suits a fast network,
where each chunk costs the gateway a write, an fsync and a row; on a slow link it makes a cut
cost up to 32 MiB at 4 in flight. The client asks for its own chunk size per upload
(``POST /uploads`` ``chunk_size``), fitted to the goodput measured so far in the run: the
bytes in flight then carry about ``IN_FLIGHT_SECONDS`` (half a second) of the link's rate
(256 KiB chunks at 20 Mbit/s and 4 in flight). Before anything is measured, the round trip
decides: a local network (under ``LAN_RTT``) keeps the server's size, anything further starts
with ``FIRST_GUESS``. Smaller chunks lose nothing on a cut link but cost a round trip each
(bench/README.md, "Shaped links", has the measurements behind these numbers).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "FIRST_GUESS",
    "IN_FLIGHT_SECONDS",
    "LAN_RTT",
    "MAX_CHUNK",
    "MIN_CHUNK",
    "PIECE",
    "STALL_TIMEOUT",
    "WHOLE_FILE_MAX",
    "LinkMeter",
    "content_digest",
    "content_digest_of",
    "fitted_chunk_size",
    "measure_rtt",
    "pieces",
]

KiB = 1024
# A chunk's body is written in pieces of this size: the write timeout is then the time the
# link may stand still, whatever the chunk's size and the link's rate.
PIECE = 64 * KiB
# Seconds a chunk's transfer may make no progress (a piece not taken, no answer) before the
# connection is given up and the chunk sent again on a new one (a link that silently stopped:
# no reset ever comes). The answer to a chunk is quick: its write, fsync and row.
STALL_TIMEOUT = 10.0
# The gateway's bounds (relaypacs.uploads.schemas); it grants at most its own setting.
MIN_CHUNK = 64 * KiB
MAX_CHUNK = 64 * 1024 * KiB
# Bytes in flight worth this many seconds of the measured rate.
IN_FLIGHT_SECONDS = 0.5
# Below this round trip the link is a local network: the server's chunk size.
# (A local network answers in well under a millisecond; on a loaded machine a gateway on the
# same host took over 5 ms: the threshold leaves room for that.)
LAN_RTT = 0.02
# The chunk size before any rate is known, on a link with a longer round trip.
FIRST_GUESS = 256 * KiB
# A file up to this size is never split: one chunk, one round trip, the manifest's SHA-256 as
# its digest. Split into 256 KiB chunks, a study of 0.5 MB CT files (three chunks each, the
# last a few hundred bytes) measured 0.65x the link's rate instead of 0.80x; a cut costs these
# whole files in flight, at most parallel x this.
WHOLE_FILE_MAX = 1 << 20
# A rate is trusted once this much was acknowledged over this long.
MIN_MEASURED_BYTES = 1 << 20
MIN_MEASURED_SECONDS = 0.5


@dataclass(slots=True)
class LinkMeter:
    """Goodput of the chunk PUTs: bytes acknowledged over the time at least one was in
    flight (retries and their back-off included: a link that is cut often measures slower,
    which asks for smaller chunks). ``rtt``: the shortest round trip of a light request."""

    clock: Callable[[], float] = time.monotonic
    in_flight: int = 0
    acknowledged: int = 0
    busy_seconds: float = 0.0
    rtt: float | None = None
    _since: float = field(default=0.0)

    def started(self) -> None:
        if self.in_flight == 0:
            self._since = self.clock()
        self.in_flight += 1

    def finished(self, acknowledged: int) -> None:
        self.in_flight -= 1
        self.acknowledged += acknowledged
        if self.in_flight == 0:
            self.busy_seconds += self.clock() - self._since

    def rate(self) -> float | None:
        """Bytes per second, or None until enough was measured."""
        busy = self.busy_seconds
        if self.in_flight:
            busy += self.clock() - self._since
        if self.acknowledged < MIN_MEASURED_BYTES or busy < MIN_MEASURED_SECONDS:
            return None
        return self.acknowledged / busy


def fitted_chunk_size(
    rate: float | None, rtt: float | None, parallel: int, sizes: Sequence[int] = ()
) -> int | None:
    """The chunk size to ask for, MIN_CHUNK to MAX_CHUNK: a power of two fitted to the link,
    or larger so that the largest of ``sizes`` (the study's files) up to WHOLE_FILE_MAX is one
    chunk; None for the server's own (a local network, or nothing known)."""
    if rate is None:
        if rtt is None or rtt < LAN_RTT:
            return None
        size = FIRST_GUESS
    else:
        wanted = rate * IN_FLIGHT_SECONDS / max(1, parallel)
        size = MIN_CHUNK
        while size * 2 <= wanted and size * 2 <= MAX_CHUNK:
            size *= 2
    whole = max((s for s in sizes if s <= WHOLE_FILE_MAX), default=0)
    return max(size, whole)


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    """``data`` in PIECE-sized slices, for a request body."""
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


async def measure_rtt(meter: LinkMeter, probe: Callable[[], Awaitable[object]]) -> float:
    """The shortest of three round trips of ``probe`` (a light request), kept in ``meter``."""
    best = float("inf")
    for _ in range(3):
        started = meter.clock()
        await probe()
        best = min(best, meter.clock() - started)
    meter.rtt = best
    return best


def content_digest(sha256_hex: str) -> str:
    """RFC 9530 Content-Digest for content whose SHA-256 (hex) is known."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii") + ":"


def content_digest_of(data: bytes) -> str:
    """RFC 9530 Content-Digest (sha-256) of ``data``."""
    return content_digest(hashlib.sha256(data).hexdigest())
