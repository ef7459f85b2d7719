"""FaultyStorage: a store that fails on purpose, for tests of the code above storage."""

from __future__ import annotations

import pytest

from relaypacs.storage import FilesystemStorage, StorageUnavailable
from relaypacs.storage.faulty import FaultyStorage


class TestFaultyStorage:
    async def test_fails_every_put_after_n(self, fs_storage: FilesystemStorage) -> None:
        faulty = FaultyStorage(fs_storage, fail_put_after=2)
        await faulty.put("u/0/0-a", b"1")
        await faulty.put("u/0/1-b", b"2")
        for _ in range(2):
            with pytest.raises(StorageUnavailable, match="injected"):
                await faulty.put("u/0/2-c", b"3")
        assert not await fs_storage.exists("u/0/2-c")
        assert [key async for key in faulty.list("u/")] == ["u/0/0-a", "u/0/1-b"]
        assert faulty.put_calls == 4

    async def test_store_before_failing_loses_only_the_answer(
        self, fs_storage: FilesystemStorage
    ) -> None:
        faulty = FaultyStorage(fs_storage, fail_put_after=0, store_before_failing=True)
        with pytest.raises(StorageUnavailable):
            await faulty.put("u/0/0-a", b"stored anyway")
        assert await fs_storage.get("u/0/0-a") == b"stored anyway"

    async def test_reads_and_streams(self, fs_storage: FilesystemStorage) -> None:
        await fs_storage.put("s", b"x" * 100)
        faulty = FaultyStorage(fs_storage, fail_get_after=1, fail_stream_after_blocks=2)
        with pytest.raises(StorageUnavailable, match="after 2 blocks"):
            async for _ in faulty.stream("s", block_size=10):
                pass
        with pytest.raises(StorageUnavailable, match="read 2"):
            await faulty.get("s")

    async def test_outage_and_recovery(self, fs_storage: FilesystemStorage) -> None:
        faulty = FaultyStorage(fs_storage)
        faulty.available = False
        with pytest.raises(StorageUnavailable):
            await faulty.check()
        with pytest.raises(StorageUnavailable):
            await faulty.exists("a")
        faulty.available = True
        await faulty.check()
        await faulty.put("a", b"1")
        assert await faulty.get("a") == b"1"
