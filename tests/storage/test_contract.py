"""The ObjectStorage contract, run against the filesystem and the S3 (moto server) backends."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os

import pytest

from relaypacs.storage import (
    ChecksumMismatch,
    FilesystemStorage,
    ObjectNotFound,
    ObjectStorage,
    S3Storage,
)
from tests.storage.conftest import put_many

KIB = 1024
MIB = 1024 * KIB


async def collect(storage: ObjectStorage, prefix: str) -> list[str]:
    return [key async for key in storage.list(prefix)]


class TestPutGet:
    async def test_round_trip(self, storage: ObjectStorage) -> None:
        data = os.urandom(3 * MIB + 17)
        await storage.put("uploads/u1/0/0-abc", data)
        assert await storage.get("uploads/u1/0/0-abc") == data

    async def test_accepts_memoryview(self, storage: ObjectStorage) -> None:
        buffer = bytearray(os.urandom(100 * KIB))
        await storage.put("a/b", memoryview(buffer)[10:])
        assert await storage.get("a/b") == bytes(buffer[10:])

    async def test_empty_object(self, storage: ObjectStorage) -> None:
        await storage.put("empty", b"")
        assert await storage.get("empty") == b""
        assert await storage.size("empty") == 0

    async def test_overwrite_replaces_the_object(self, storage: ObjectStorage) -> None:
        await storage.put("k/v", b"first version, longer")
        await storage.put("k/v", b"second")
        assert await storage.get("k/v") == b"second"
        assert await collect(storage, "k/") == ["k/v"]

    @pytest.mark.parametrize("algorithm", ["md5", "sha256"])
    @pytest.mark.parametrize("size", [10, 300 * KIB])  # hashed inline / in a thread
    async def test_put_with_the_right_digest_stores(
        self, storage: ObjectStorage, size: int, algorithm: str
    ) -> None:
        data = os.urandom(size)
        await storage.put("m/ok", data, **{algorithm: hashlib.new(algorithm, data).hexdigest()})
        assert await storage.get("m/ok") == data

    @pytest.mark.parametrize("algorithm", ["md5", "sha256"])
    @pytest.mark.parametrize("size", [10, 300 * KIB])
    async def test_put_with_a_wrong_digest_stores_nothing(
        self, storage: ObjectStorage, size: int, algorithm: str
    ) -> None:
        data = os.urandom(size)
        await storage.put("m/kept", b"the object already there")
        wrong = {algorithm: hashlib.new(algorithm, data + b"x").hexdigest()}
        with pytest.raises(ChecksumMismatch) as raised:
            await storage.put("m/new", data, **wrong)
        assert raised.value.algorithm == algorithm
        with pytest.raises(ChecksumMismatch):
            await storage.put("m/kept", data, **wrong)
        assert not await storage.exists("m/new")
        assert await storage.get("m/kept") == b"the object already there"
        assert await collect(storage, "m/") == ["m/kept"]

    async def test_missing_key_raises_object_not_found(self, storage: ObjectStorage) -> None:
        with pytest.raises(ObjectNotFound):
            await storage.get("no/such/key")

    async def test_a_directory_like_prefix_is_not_an_object(self, storage: ObjectStorage) -> None:
        await storage.put("dir/obj", b"1")
        with pytest.raises(ObjectNotFound):
            await storage.get("dir")
        assert not await storage.exists("dir")


class TestAtomicity:
    async def test_a_reader_sees_a_whole_version_only(self, storage: ObjectStorage) -> None:
        size = 2 * MIB
        versions = [bytes([v]) * size for v in b"AB"]
        await storage.put("race/obj", versions[0])
        done = asyncio.Event()

        async def writer() -> None:
            try:
                for i in range(12):
                    await storage.put("race/obj", versions[(i + 1) % 2])
            finally:
                done.set()

        async def reader() -> int:
            reads = 0
            while not done.is_set() or reads < 5:
                data = await storage.get("race/obj")
                assert data in versions, "read a partial or mixed object"
                reads += 1
            return reads

        _, reads = await asyncio.gather(writer(), reader())
        assert reads >= 5


class TestExistsSizeDelete:
    async def test_exists_and_size(self, storage: ObjectStorage) -> None:
        assert not await storage.exists("x/1")
        await storage.put("x/1", b"12345")
        assert await storage.exists("x/1")
        assert await storage.size("x/1") == 5

    async def test_size_of_missing_key(self, storage: ObjectStorage) -> None:
        with pytest.raises(ObjectNotFound):
            await storage.size("x/missing")

    async def test_delete(self, storage: ObjectStorage) -> None:
        await storage.put("x/1", b"1")
        await storage.delete("x/1")
        assert not await storage.exists("x/1")
        await storage.delete("x/1")  # a missing key is fine
        await storage.delete("never/was")


class TestList:
    KEYS = (
        "uploads/u1/0/2-ccc",
        "uploads/u10/0/0-eee",
        "uploads/u1/1/0-ddd",
        "uploads/u1/0/10-bbb",
        "uploads/u1/0/1-aaa",
        "reports/r1.pdf",
    )

    async def test_sorted_keys_under_a_prefix(self, storage: ObjectStorage) -> None:
        for key in self.KEYS:
            await storage.put(key, key.encode())
        assert await collect(storage, "uploads/u1/") == [
            "uploads/u1/0/1-aaa",
            "uploads/u1/0/10-bbb",
            "uploads/u1/0/2-ccc",
            "uploads/u1/1/0-ddd",
        ]
        assert await collect(storage, "") == sorted(self.KEYS)

    async def test_prefix_is_a_string_prefix(self, storage: ObjectStorage) -> None:
        for key in self.KEYS:
            await storage.put(key, b"")
        assert await collect(storage, "uploads/u1") == [
            "uploads/u1/0/1-aaa",
            "uploads/u1/0/10-bbb",
            "uploads/u1/0/2-ccc",
            "uploads/u1/1/0-ddd",
            "uploads/u10/0/0-eee",
        ]
        assert await collect(storage, "uploads/u1/0/1") == [
            "uploads/u1/0/1-aaa",
            "uploads/u1/0/10-bbb",
        ]

    async def test_missing_prefix_lists_nothing(self, storage: ObjectStorage) -> None:
        assert await collect(storage, "nothing/here/") == []
        assert await collect(storage, "") == []

    async def test_keys_with_when_they_were_last_put(self, storage: ObjectStorage) -> None:
        """list_modified: the same keys as list, each with the time of its last put (S3 keeps
        whole seconds), which a later put of the same key moves on."""
        for key in self.KEYS:
            await storage.put(key, b"")
        started = dt.datetime.now(dt.UTC)
        await asyncio.sleep(1.1)  # S3's LastModified has whole seconds
        await storage.put("uploads/u1/0/2-ccc", b"again")
        ended = dt.datetime.now(dt.UTC)
        listed = [entry async for entry in storage.list_modified("uploads/u1/")]
        assert [key for key, _ in listed] == await collect(storage, "uploads/u1/")
        times = dict(listed)
        second = dt.timedelta(seconds=1)
        for key, modified in times.items():
            assert modified.utcoffset() == dt.timedelta(0), key
            if key == "uploads/u1/0/2-ccc":
                assert started - second < modified <= ended + second
            else:
                assert started - 60 * second < modified <= started + second, key
        assert times["uploads/u1/0/2-ccc"] > times["uploads/u1/0/1-aaa"]
        assert [entry async for entry in storage.list_modified("nothing/")] == []


class TestDeletePrefix:
    async def test_deletes_a_tree(self, storage: ObjectStorage) -> None:
        # (more than one DeleteObjects batch of 1000: see test_s3.py)
        keys = [f"uploads/big/{i // 10}/{i}-x" for i in range(120)]
        await put_many(storage, keys)
        await storage.put("uploads/other/0/0-x", b"kept")
        assert await storage.delete_prefix("uploads/big/") == 120
        assert await collect(storage, "uploads/big/") == []
        assert await storage.get("uploads/other/0/0-x") == b"kept"

    async def test_string_prefix(self, storage: ObjectStorage) -> None:
        await put_many(storage, ["p/a1/x", "p/a2", "p/b1/y"])
        assert await storage.delete_prefix("p/a") == 2
        assert await collect(storage, "") == ["p/b1/y"]

    async def test_missing_prefix_deletes_nothing(self, storage: ObjectStorage) -> None:
        assert await storage.delete_prefix("nothing/") == 0

    async def test_put_after_delete_prefix(self, storage: ObjectStorage) -> None:
        await storage.put("up/1/0/0-a", b"1")
        await storage.delete_prefix("up/1/")
        await storage.put("up/1/0/0-a", b"2")
        assert await storage.get("up/1/0/0-a") == b"2"

    async def test_empty_prefix_is_refused(self, storage: ObjectStorage) -> None:
        await storage.put("keep", b"1")
        with pytest.raises(ValueError, match="non-empty"):
            await storage.delete_prefix("")
        assert await storage.exists("keep")


class TestStream:
    async def test_multi_block_object(self, storage: ObjectStorage) -> None:
        data = os.urandom(2 * MIB + 12345)
        await storage.put("s/obj", data)
        blocks = [block async for block in storage.stream("s/obj", block_size=256 * KIB)]
        assert b"".join(blocks) == data
        assert len(blocks) > 1
        assert all(0 < len(block) <= 256 * KIB for block in blocks)

    async def test_missing_key(self, storage: ObjectStorage) -> None:
        with pytest.raises(ObjectNotFound):
            async for _ in storage.stream("s/missing"):
                pass

    async def test_closing_early(self, storage: ObjectStorage) -> None:
        await storage.put("s/obj", os.urandom(MIB))
        for _ in range(3):  # an early close releases the file or connection each time
            stream = storage.stream("s/obj", block_size=64 * KIB)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                assert len(await anext(stream)) <= 64 * KIB
        assert await storage.size("s/obj") == MIB


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../../escape",
    "a/./b",
    "./a",
    "a/..",
    ".",
    "..",
    "a//b",
    "a/",
    "a\\..\\b",
    "a\x00b",
    "a\nb",
    "a\tb",
    "a b",
    "uploads/é",
    "a/.tmp-123",
    "x" * 1025,
    "a/" + "y" * 256,
]


class TestKeyValidation:
    @pytest.mark.parametrize("key", BAD_KEYS)
    async def test_bad_keys_are_rejected_before_any_io(
        self, storage: ObjectStorage, key: str
    ) -> None:
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.put(key, b"data")
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.get(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.exists(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.size(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.delete(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.local_path(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            await anext(aiter(storage.stream(key)))
        assert await collect(storage, "") == []

    @pytest.mark.parametrize("prefix", ["/", "../", "a//", "a/../", "..", "a\x00"])
    async def test_bad_prefixes_are_rejected(self, storage: ObjectStorage, prefix: str) -> None:
        with pytest.raises(ValueError, match="invalid storage key"):
            await collect(storage, prefix)
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.delete_prefix(prefix)

    async def test_a_key_never_leaves_the_root(self, storage: ObjectStorage) -> None:
        for key in ("uploads/u1/0/0-" + "a" * 32, "a.b/c_d-e.F9"):
            await storage.put(key, b"ok")
            path = storage.local_path(key)
            if isinstance(storage, FilesystemStorage):
                assert path is not None
                assert path.resolve().is_relative_to(storage.root.resolve())
                assert path.read_bytes() == b"ok"
            else:
                assert path is None


class TestCheck:
    async def test_ready(self, storage: ObjectStorage) -> None:
        await storage.check()

    async def test_backend_kinds(self, storage: ObjectStorage) -> None:
        assert isinstance(storage, FilesystemStorage | S3Storage)
