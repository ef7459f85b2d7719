"""Filesystem backend specifics: durability steps, temporary files, failures mid-put."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaypacs.storage import FilesystemStorage, StorageError, StorageFull, StorageUnavailable


@dataclass(frozen=True)
class FsyncCall:
    inode: int
    is_dir: bool
    # Inode of the object's final path at the time of the call (None: not there yet).
    target_inode: int | None


def record_fsync(
    monkeypatch: pytest.MonkeyPatch, target: Path, before: Callable[[int], None] | None = None
) -> list[FsyncCall]:
    """Record every os.fsync (then really fsync). Observation only: the real call still runs."""
    calls: list[FsyncCall] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        try:
            target_inode: int | None = target.stat().st_ino
        except FileNotFoundError:
            target_inode = None
        calls.append(FsyncCall(st.st_ino, stat.S_ISDIR(st.st_mode), target_inode))
        if before is not None:
            before(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


class TestDurability:
    async def test_file_then_directory_are_fsynced(
        self, fs_storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key = "uploads/u1/0/0-abc"
        await fs_storage.put(key, b"warm up the directories")
        target = fs_storage.root / key
        calls = record_fsync(monkeypatch, target)

        await fs_storage.put(key, b"chunk bytes")

        file_inode = target.stat().st_ino
        dir_inode = target.parent.stat().st_ino
        assert calls == [
            # the new file, before it is renamed into place (the old object is still there)
            FsyncCall(file_inode, is_dir=False, target_inode=calls[0].target_inode),
            # then its directory, after the rename
            FsyncCall(dir_inode, is_dir=True, target_inode=file_inode),
        ]
        assert calls[0].target_inode != file_inode

    async def test_new_directories_are_fsynced_in_their_parents(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        root = tmp_path / "objects"
        key = "uploads/u1/0/0-abc"
        calls = record_fsync(monkeypatch, root / key)
        async with FilesystemStorage(root) as store:
            await store.put(key, b"chunk")

        synced_dirs = {call.inode for call in calls if call.is_dir}
        # every directory that got a new entry: the root's parent (root), the root (uploads),
        # uploads (u1), u1 (0), and 0 (the object)
        for directory in (
            tmp_path,
            root,
            root / "uploads",
            root / "uploads/u1",
            root / "uploads/u1/0",
        ):
            assert directory.stat().st_ino in synced_dirs, directory
        files = [call for call in calls if not call.is_dir]
        assert [call.inode for call in files] == [(root / key).stat().st_ino]

    async def test_only_two_fsyncs_per_put_into_a_known_directory(
        self, fs_storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await fs_storage.put("u/0/0-a", b"1")
        calls = record_fsync(monkeypatch, fs_storage.root / "u/0/1-b")
        await fs_storage.put("u/0/1-b", b"2")
        assert [call.is_dir for call in calls] == [False, True]

    async def test_put_many_fsyncs_each_file_then_their_directory_once(
        self, fs_storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A chunk batch: every file fsynced before its rename, then the shared directory
        once, after every rename; a part with a wrong SHA-256 is not stored, the others are."""
        await fs_storage.put("u/0-a", b"warm up the directory")
        items = [(f"u/{i}-k", f"part {i}".encode(), None) for i in range(1, 5)]
        bad = ("u/9-k", b"lying part", hashlib.sha256(b"other").hexdigest())
        good = ("u/8-k", b"true part", hashlib.sha256(b"true part").hexdigest())
        calls = record_fsync(monkeypatch, fs_storage.root / "u/1-k")
        results = await fs_storage.put_many([*items, bad, good])
        assert [type(r).__name__ if r else None for r in results] == [
            None,
            None,
            None,
            None,
            "ChecksumMismatch",
            None,
        ]
        for key, data, _ in [*items, good]:
            assert (fs_storage.root / key).read_bytes() == data
        assert not (fs_storage.root / "u/9-k").exists()
        assert sorted(p.name for p in (fs_storage.root / "u").iterdir()) == sorted(
            ["0-a", "1-k", "2-k", "3-k", "4-k", "8-k"]
        )  # no temporary file left
        assert [call.is_dir for call in calls] == [False] * 5 + [True]
        assert calls[-1].inode == (fs_storage.root / "u").stat().st_ino

    async def test_objects_are_private(self, fs_storage: FilesystemStorage) -> None:
        await fs_storage.put("u/0/0-a", b"phi")
        assert stat.S_IMODE((fs_storage.root / "u/0/0-a").stat().st_mode) & 0o077 == 0
        assert stat.S_IMODE((fs_storage.root / "u").stat().st_mode) & 0o077 == 0


class TestFailedPut:
    @pytest.mark.parametrize(
        ("code", "expected"),
        [
            (errno.EIO, StorageUnavailable),
            (errno.ENOSPC, StorageFull),  # a kind of StorageUnavailable: 507, not 503
            (errno.EINVAL, StorageError),
        ],
    )
    async def test_fsync_failure_keeps_the_old_object_and_no_temporary_file(
        self,
        fs_storage: FilesystemStorage,
        monkeypatch: pytest.MonkeyPatch,
        code: int,
        expected: type[StorageError],
    ) -> None:
        await fs_storage.put("u/0/0-a", b"old")

        def fail(fd: int) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", fail)
        with pytest.raises(expected, match=errno.errorcode[code]) as raised:
            await fs_storage.put("u/0/0-a", b"new bytes")
        assert type(raised.value) is expected
        monkeypatch.undo()

        assert await fs_storage.get("u/0/0-a") == b"old"
        assert sorted(p.name for p in (fs_storage.root / "u/0").iterdir()) == ["0-a"]

    async def test_a_put_in_flight_is_invisible(
        self, fs_storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await fs_storage.put("u/0/0-a", b"neighbour")
        written = threading.Event()
        release = threading.Event()

        def pause_on_file_fsync(fd: int) -> None:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                written.set()
                release.wait(10)

        record_fsync(monkeypatch, fs_storage.root / "u/0/1-b", before=pause_on_file_fsync)
        put = asyncio.create_task(fs_storage.put("u/0/1-b", b"in flight"))
        try:
            assert await asyncio.to_thread(written.wait, 10)
            # the bytes are on disk in a temporary file, but no reader can see them yet
            names = sorted(p.name for p in (fs_storage.root / "u/0").iterdir())
            assert len(names) == 2
            assert names[0].startswith(".tmp-")
            assert [key async for key in fs_storage.list("u/")] == ["u/0/0-a"]
            assert not await fs_storage.exists("u/0/1-b")
        finally:
            release.set()
            await put
        assert [key async for key in fs_storage.list("u/")] == ["u/0/0-a", "u/0/1-b"]


class TestTemporaryFiles:
    async def test_leftovers_are_not_listed_and_are_swept_when_old(
        self, fs_storage: FilesystemStorage
    ) -> None:
        await fs_storage.put("u/0/0-a", b"1")
        old = fs_storage.root / "u/0/.tmp-0123456789abcdef"
        fresh = fs_storage.root / "u/.tmp-fedcba9876543210"
        old.write_bytes(b"crashed mid-put")
        fresh.write_bytes(b"maybe still being written")
        an_hour_ago = time.time() - 3600
        os.utime(old, (an_hour_ago, an_hour_ago))

        assert [key async for key in fs_storage.list("")] == ["u/0/0-a"]
        assert await fs_storage.sweep_temporary(older_than_seconds=600) == 1
        assert not old.exists()
        assert fresh.exists()
        assert await fs_storage.get("u/0/0-a") == b"1"

    async def test_delete_prefix_removes_the_tree_with_leftovers(
        self, fs_storage: FilesystemStorage
    ) -> None:
        await fs_storage.put("uploads/u1/0/0-a", b"1")
        await fs_storage.put("uploads/u1/1/0-b", b"2")
        (fs_storage.root / "uploads/u1/0/.tmp-0123456789abcdef").write_bytes(b"x")
        assert await fs_storage.delete_prefix("uploads/u1/") == 2
        assert not (fs_storage.root / "uploads/u1").exists()
        assert (fs_storage.root / "uploads").is_dir()


class TestLifecycle:
    async def test_check_fails_when_the_root_is_unusable(self, tmp_path: Path) -> None:
        not_a_dir = tmp_path / "file"
        not_a_dir.write_bytes(b"")
        store = FilesystemStorage(not_a_dir / "objects")
        try:
            with pytest.raises(StorageUnavailable, match="not writable"):
                await store.check()
        finally:
            await store.close()

    async def test_closed_store_is_unavailable(self, tmp_path: Path) -> None:
        store = FilesystemStorage(tmp_path)
        await store.close()
        with pytest.raises(StorageUnavailable, match="closed"):
            await store.put("a", b"1")

    async def test_local_path_needs_no_io(self, tmp_path: Path) -> None:
        store = FilesystemStorage(tmp_path / "never-created")
        try:
            assert store.local_path("a/b") == tmp_path / "never-created/a/b"
            assert not (tmp_path / "never-created").exists()
        finally:
            await store.close()
