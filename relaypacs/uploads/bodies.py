"""Chunk bodies in memory: how many bytes of them the process holds at once, each user's share
of that, and a body that stops arriving.

A chunk's body is read whole before it is hashed and stored, so the bytes held are bounded:
`BodyBudget` reserves each body's declared length before it is read and gives it back once
the chunk is stored. A user's bodies take at most their share of the budget, so a clinician on
a slow link (or a client that stalls) whose chunks trickle in holds only that share, and
everyone else's chunks go on. A body that sends nothing for `idle_seconds` is given up with a
408 (`body_stalled`): its reservation is returned at once instead of when the connection
finally drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from starlette.requests import Request

from relaypacs.uploads.errors import BodyStalled


class BodyBudget:
    """Bytes of chunk bodies held at once (`total`), of which one user holds at most
    `per_user`. A body larger than what is free waits; one body alone always fits, so a body
    as large as the budget never waits forever."""

    def __init__(self, *, total: int, per_user: int) -> None:
        self.total = total
        self.per_user = per_user
        self._used = 0
        self._by_user: dict[uuid.UUID, int] = {}
        self._changed = asyncio.Condition()

    @property
    def used(self) -> int:
        return self._used

    def _fits(self, user_id: uuid.UUID, size: int) -> bool:
        mine = self._by_user.get(user_id, 0)
        return (self._used == 0 or self._used + size <= self.total) and (
            mine == 0 or mine + size <= self.per_user
        )

    @contextlib.asynccontextmanager
    async def hold(self, user_id: uuid.UUID, size: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(user_id, size))
            self._used += size
            self._by_user[user_id] = self._by_user.get(user_id, 0) + size
        try:
            yield
        finally:
            async with self._changed:
                self._used -= size
                left = self._by_user[user_id] - size
                if left:
                    self._by_user[user_id] = left
                else:
                    del self._by_user[user_id]
                self._changed.notify_all()


async def _parts(
    request: Request, *, idle_seconds: float, given_up: str
) -> AsyncGenerator[bytes, None]:
    """The parts of the request's body as they arrive; BodyStalled (`given_up`: its message)
    when nothing arrives for `idle_seconds` (a link that silently dropped, a client that
    stopped sending)."""
    stream = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_seconds):
                part = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyStalled(given_up) from None
        yield part


async def read_body(request: Request, *, idle_seconds: float) -> bytes:
    """The request's whole body, or BodyStalled when nothing of it arrives for
    `idle_seconds` (a link that silently dropped, a client that stopped sending)."""
    given_up = (
        f"Nothing of the chunk's body arrived for {idle_seconds:g} seconds; "
        "it was given up. Send the chunk again."
    )
    parts = [part async for part in _parts(request, idle_seconds=idle_seconds, given_up=given_up)]
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def read_body_into(request: Request, size: int, *, idle_seconds: float) -> bytearray:
    """The request's whole body of ``size`` bytes (its Content-Length) read into one buffer
    allocated once: a large body (a chunk batch) is never held twice, as its pieces and their
    join. BodyStalled as `read_body`; a body of another length is returned as far as it came
    (shorter) or cut at ``size + 1`` bytes (longer): the caller refuses it."""
    given_up = (
        f"Nothing of the request's body arrived for {idle_seconds:g} seconds; "
        "it was given up. Send it again."
    )
    buffer = bytearray(size)
    filled = 0
    with memoryview(buffer) as view:
        parts = _parts(request, idle_seconds=idle_seconds, given_up=given_up)
        async with contextlib.aclosing(parts):
            async for part in parts:
                if filled + len(part) > size:
                    longer = True
                    break
                view[filled : filled + len(part)] = part
                filled += len(part)
            else:
                longer = False
    if longer:
        return buffer + b"\0"  # longer than declared
    if filled < size:
        del buffer[filled:]
    return buffer
