"""A storage wrapper that fails on purpose, for tests of what happens when storage breaks."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

from ._base import DEFAULT_BLOCK_SIZE, ObjectStorage, StorageUnavailable

__all__ = ["FaultyStorage"]


class FaultyStorage(ObjectStorage):
    """Delegates to ``inner`` until told to fail, then raises :class:`StorageUnavailable`.

    - ``fail_put_after=N``: the first N puts succeed, every later one fails (a store that dies
      in the middle of an upload). ``None``: puts never fail by count.
    - ``store_before_failing``: a failing put still reaches ``inner`` and only then raises (the
      bytes are stored but the acknowledgement is lost), to exercise idempotent retries.
    - ``fail_get_after=N``: the same for reads (get and stream each count as one read).
    - ``fail_stream_after_blocks=N``: every stream raises after yielding N blocks.
    - ``available = False`` (settable at any time): every operation fails, ``check`` included,
      until set back to ``True``.

    ``put_calls`` / ``get_calls`` count the attempts seen, failed ones included.
    The wrapper does not own ``inner``: ``close`` leaves it open.
    """

    def __init__(
        self,
        inner: ObjectStorage,
        fail_put_after: int | None = None,
        *,
        store_before_failing: bool = False,
        fail_get_after: int | None = None,
        fail_stream_after_blocks: int | None = None,
    ) -> None:
        self.inner = inner
        self.fail_put_after = fail_put_after
        self.store_before_failing = store_before_failing
        self.fail_get_after = fail_get_after
        self.fail_stream_after_blocks = fail_stream_after_blocks
        self.available = True
        self.put_calls = 0
        self.get_calls = 0

    def _gate(self, operation: str) -> None:
        if not self.available:
            raise StorageUnavailable(f"injected fault: storage unavailable ({operation})")

    def _count_get(self) -> None:
        self._gate("get")
        self.get_calls += 1
        if self.fail_get_after is not None and self.get_calls > self.fail_get_after:
            raise StorageUnavailable(f"injected fault: read {self.get_calls} failed")

    async def put(
        self,
        key: str,
        data: bytes | memoryview,
        *,
        md5: str | None = None,
        sha256: str | None = None,
    ) -> None:
        self._gate("put")
        self.put_calls += 1
        failing = self.fail_put_after is not None and self.put_calls > self.fail_put_after
        if failing and not self.store_before_failing:
            raise StorageUnavailable(f"injected fault: put {self.put_calls} failed")
        await self.inner.put(key, data, md5=md5, sha256=sha256)
        if failing:
            raise StorageUnavailable(f"injected fault: put {self.put_calls} failed after storing")

    async def get(self, key: str) -> bytes:
        self._count_get()
        return await self.inner.get(key)

    async def stream(
        self, key: str, *, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> AsyncIterator[bytes]:
        self._count_get()
        blocks = 0
        inner = self.inner.stream(key, block_size=block_size)
        try:
            async for block in inner:
                if (
                    self.fail_stream_after_blocks is not None
                    and blocks >= self.fail_stream_after_blocks
                ):
                    raise StorageUnavailable(f"injected fault: stream failed after {blocks} blocks")
                self._gate("stream")
                blocks += 1
                yield block
        finally:
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:  # release the inner file or connection now, not at GC
                await aclose()

    async def exists(self, key: str) -> bool:
        self._gate("exists")
        return await self.inner.exists(key)

    async def size(self, key: str) -> int:
        self._gate("size")
        return await self.inner.size(key)

    async def delete(self, key: str) -> None:
        self._gate("delete")
        await self.inner.delete(key)

    async def delete_prefix(self, prefix: str) -> int:
        self._gate("delete_prefix")
        return await self.inner.delete_prefix(prefix)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        self._gate("list")
        async for key in self.inner.list(prefix):
            yield key

    async def list_modified(self, prefix: str) -> AsyncIterator[tuple[str, dt.datetime]]:
        self._gate("list")
        async for entry in self.inner.list_modified(prefix):
            yield entry

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(key)

    async def check(self) -> None:
        self._gate("check")
        await self.inner.check()

    async def close(self) -> None:
        pass
