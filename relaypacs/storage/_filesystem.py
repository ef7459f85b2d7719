"""Object storage on a local directory: the embedded default (atomic, fsync-durable puts)."""

# This module is the os-level layer: str paths and descriptor calls (O_DIRECTORY, fsync) in the
# hot path of every put, where pathlib would only add objects and indirection.
# ruff: noqa: PTH102, PTH103, PTH105, PTH106, PTH108, PTH116, PTH118, PTH120

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import functools
import io
import os
import secrets
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ._base import (
    DEFAULT_BLOCK_SIZE,
    ObjectNotFound,
    ObjectStorage,
    StorageError,
    StorageFull,
    StorageUnavailable,
    check_digests,
    require_delete_prefix,
    validate_key,
    validate_prefix,
)

__all__ = ["TEMP_PREFIX", "FilesystemStorage"]

T = TypeVar("T")

# Temporary files start with a dot, which no valid key segment does, so they can never collide
# with an object and list() skips them.
TEMP_PREFIX = ".tmp-"
# Errors that mean "the disk cannot take this now" (503, retry later) rather than a bug.
_UNAVAILABLE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ESTALE,
        errno.ETIMEDOUT,
    }
)
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
# Bound on the set of directories known durable; clearing it only costs a few extra fsyncs.
_DURABLE_DIRS_LIMIT = 65536
_FILE_MODE = 0o600  # objects hold PHI
_DIR_MODE = 0o700


def _storage_error(operation: str, key: str, exc: OSError) -> StorageError:
    name = errno.errorcode.get(exc.errno or 0, "unknown error")
    cls: type[StorageError] = StorageError
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cls = StorageFull
    elif exc.errno in _UNAVAILABLE_ERRNOS:
        cls = StorageUnavailable
    return cls(f"filesystem {operation} of {key!r} failed: {name} ({exc.strerror})")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemStorage(ObjectStorage):
    """Objects are files under ``root`` at their key's path.

    ``put`` writes ``<dir>/.tmp-<random>``, fsyncs it, renames it over the key's file and fsyncs
    the directory; a directory it has to create is fsynced in its parent before use. Blocking I/O
    runs in a dedicated thread pool of ``max_workers`` threads, so storage work neither blocks the
    event loop nor starves the default executor.

    One process owns a root: a put from another process racing with delete_prefix of the same
    directory is not guarded against.
    """

    def __init__(self, root: Path, *, max_workers: int = 16) -> None:
        self._root = Path(root).absolute()
        self._root_str = os.fspath(self._root)
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="relaypacs-storage")
        # Relative directory paths ("" is the root) that exist and whose entry is fsynced in
        # their parent: a put into one of them needs no directory work.
        self._durable_dirs: set[str] = set()
        self._durable_dirs_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"FilesystemStorage(root={self._root_str!r})"

    @property
    def root(self) -> Path:
        return self._root

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StorageUnavailable("filesystem storage is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _abs(self, rel: str) -> str:
        return os.path.join(self._root_str, rel) if rel else self._root_str

    def _make_dirs(self, rel: str) -> list[str]:
        """Create directory ``rel`` and its missing ancestors; return those not known durable.

        The returned directories (top-down) still need their entries fsynced in their parents
        (:meth:`_sync_dirs`): also the ones that already existed, which a put in another thread
        (or a crashed process) may have created without syncing yet.
        """
        pending: list[str] = []
        current = rel
        while current not in self._durable_dirs:
            pending.append(current)
            if not current:
                break
            current = current.rpartition("/")[0]
        pending.reverse()
        for directory in pending:
            if directory:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self._abs(directory), _DIR_MODE)
            else:
                os.makedirs(self._root_str, _DIR_MODE, exist_ok=True)
        return pending

    def _sync_dirs(self, pending: list[str]) -> None:
        """Fsync the parent of each directory in ``pending``, then remember them as durable.

        Done after the object's own fsyncs, deepest first: on a journaling filesystem those
        already committed the new entries, so these syncs find little or nothing left to write.
        """
        for directory in reversed(pending):
            if directory:
                _fsync_dir(self._abs(directory.rpartition("/")[0]))
            else:
                _fsync_dir(os.path.dirname(self._root_str))
        with self._durable_dirs_lock:
            if len(self._durable_dirs) + len(pending) > _DURABLE_DIRS_LIMIT:
                self._durable_dirs.clear()
            self._durable_dirs.update(pending)

    def _ensure_dir(self, rel: str) -> None:
        """Make directory ``rel`` exist durably."""
        self._sync_dirs(self._make_dirs(rel))

    def _forget_dirs(self, rel_prefix: str) -> None:
        with self._durable_dirs_lock:
            self._durable_dirs = {d for d in self._durable_dirs if not d.startswith(rel_prefix)}

    def _forget_all_dirs(self) -> None:
        with self._durable_dirs_lock:
            self._durable_dirs = set()

    def _open_temp(self, dir_rel: str) -> tuple[int, str]:
        tmp = os.path.join(self._abs(dir_rel), TEMP_PREFIX + secrets.token_hex(8))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(tmp, flags, _FILE_MODE), tmp

    # -- blocking implementations (run in the pool) --------------------------------------------

    def _put_sync(
        self,
        key: str,
        data: bytes | memoryview,
        md5: str | None = None,
        sha256: str | None = None,
    ) -> None:
        dir_path, new_dirs = self._put_file_sync(key, data, md5, sha256)
        # The rename is only durable once the directory itself is synced, and a new directory
        # once its parent is.
        _fsync_dir(dir_path)
        self._sync_dirs(new_dirs)

    def _put_file_sync(
        self,
        key: str,
        data: bytes | memoryview,
        md5: str | None = None,
        sha256: str | None = None,
    ) -> tuple[str, list[str]]:
        """The object's own part of a put: checked, written, fsynced and renamed into place.
        Its directory (returned, with the new directories above it) is not synced yet."""
        check_digests(data, md5=md5, sha256=sha256)
        dir_rel = key.rpartition("/")[0]
        dir_path = self._abs(dir_rel)
        new_dirs = self._make_dirs(dir_rel)
        try:
            fd, tmp = self._open_temp(dir_rel)
        except FileNotFoundError:
            # The directory was removed after we recorded it (by another process, as
            # delete_prefix forgets what it removes): forget everything, create it again.
            self._forget_all_dirs()
            new_dirs = self._make_dirs(dir_rel)
            fd, tmp = self._open_temp(dir_rel)
        try:
            try:
                view = memoryview(data)
                if view.format != "B" or view.ndim != 1:
                    view = view.cast("B")
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._abs(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return dir_path, new_dirs

    def _get_sync(self, key: str) -> bytes:
        with io.FileIO(self._abs(key), "r") as f:
            return f.readall()

    def _stat_sync(self, key: str) -> os.stat_result | None:
        try:
            st = os.stat(self._abs(key))
        except _MISSING:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def _delete_sync(self, key: str) -> None:
        with contextlib.suppress(*_MISSING):
            os.unlink(self._abs(key))

    def _remove_tree(self, top: str) -> int:
        """Remove ``top`` (a directory) and everything below; return the objects removed."""
        count = 0
        for _attempt in range(3):
            for dirpath, dirnames, filenames in os.walk(top, topdown=False):
                for name in filenames:
                    try:
                        os.unlink(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    if not name.startswith("."):
                        count += 1
                for name in dirnames:
                    path = os.path.join(dirpath, name)
                    try:
                        os.rmdir(path)
                    except NotADirectoryError:  # a symlink to a directory: not ours, unlink it
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            try:
                os.rmdir(top)
            except FileNotFoundError:
                return count
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                continue  # a put raced into the tree: walk it again
            return count
        raise OSError(errno.ENOTEMPTY, "directory keeps being written to while deleted")

    def _delete_prefix_sync(self, prefix: str) -> int:
        dir_rel, _, name_prefix = prefix.rpartition("/")
        base = self._abs(dir_rel)
        count = 0
        try:
            if not name_prefix:  # "a/b/": the whole directory a/b
                count = self._remove_tree(base)
            else:
                with os.scandir(base) as it:
                    entries = [e for e in it if e.name.startswith(name_prefix)]
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        count += self._remove_tree(entry.path)
                    else:
                        try:
                            os.unlink(entry.path)
                        except FileNotFoundError:
                            continue
                        count += 1
        except (FileNotFoundError, NotADirectoryError):
            pass
        finally:
            self._forget_dirs(prefix.rstrip("/"))
        return count

    def _list_sync(self, prefix: str) -> list[str]:
        return [key for key, _ in self._list_entries_sync(prefix, times=False)]

    def _list_entries_sync(self, prefix: str, *, times: bool) -> list[tuple[str, float]]:
        """The keys under ``prefix``, sorted, each with its file's mtime (0.0 unless ``times``;
        a file deleted while listed is left out)."""
        dir_rel, _, name_prefix = prefix.rpartition("/")
        keys: list[tuple[str, float]] = []
        stack: list[tuple[str, str]] = []  # (absolute dir, its key prefix)
        try:
            with os.scandir(self._abs(dir_rel)) as it:
                top = [e for e in it if e.name.startswith(name_prefix)]
        except (FileNotFoundError, NotADirectoryError):
            return keys
        rel_base = f"{dir_rel}/" if dir_rel else ""

        def visit(entry: os.DirEntry[str], rel: str) -> None:
            if entry.name.startswith("."):  # temporary files, foreign dot files
                return
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, f"{rel}{entry.name}/"))
            elif entry.is_file(follow_symlinks=False):
                mtime = 0.0
                if times:
                    try:
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                    except FileNotFoundError:
                        return
                keys.append((rel + entry.name, mtime))

        for entry in top:
            visit(entry, rel_base)
        while stack:
            path, rel = stack.pop()
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        visit(entry, rel)
            except (FileNotFoundError, NotADirectoryError):
                continue
        keys.sort()
        return keys

    def _sweep_sync(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        count = 0
        for dirpath, _dirnames, filenames in os.walk(self._root_str):
            for name in filenames:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        count += 1
                except FileNotFoundError:
                    continue
        return count

    def _check_sync(self) -> None:
        self._ensure_dir("")
        fd, tmp = self._open_temp("")
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(tmp)

    # -- the interface -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._run(functools.partial(self._ensure_dir, ""))
        except OSError as exc:
            raise _storage_error("open", "", exc) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def put(
        self,
        key: str,
        data: bytes | memoryview,
        *,
        md5: str | None = None,
        sha256: str | None = None,
    ) -> None:
        """Store ``data`` durably; ``data`` must not be modified until this returns."""
        validate_key(key)
        try:
            await self._run(functools.partial(self._put_sync, key, data, md5, sha256))
        except OSError as exc:
            raise _storage_error("put", key, exc) from None

    async def put_many(
        self, items: Sequence[tuple[str, bytes | memoryview, str | None]]
    ) -> list[BaseException | None]:
        """Each object written and fsynced in the pool at once (the journal commits of their
        fsyncs coalesce), then each directory they went to synced once for all of them: a
        batch of chunks of one upload (one directory) costs one directory fsync, not one each.
        Nothing is durable (and this does not return) before that last sync."""
        for key, _, _ in items:
            validate_key(key)
        loop = asyncio.get_running_loop()
        if self._closed:
            raise StorageUnavailable("filesystem storage is closed")
        results: list[BaseException | tuple[str, list[str]]] = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._executor, functools.partial(self._put_file_sync, key, data, None, sha)
                )
                for key, data, sha in items
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        dirs: dict[str, list[str]] = {}
        for result in results:
            if not isinstance(result, BaseException):
                dir_path, new_dirs = result
                dirs.setdefault(dir_path, []).extend(new_dirs)

        def sync_dirs() -> None:
            for dir_path, new_dirs in dirs.items():
                _fsync_dir(dir_path)
                self._sync_dirs(list(dict.fromkeys(new_dirs)))

        try:
            if dirs:
                await self._run(sync_dirs)
        except OSError as exc:
            raise _storage_error("put", items[0][0], exc) from None
        return [
            (_storage_error("put", key, r) if isinstance(r, OSError) else r)
            if isinstance(r, BaseException)
            else None
            for (key, _, _), r in zip(items, results, strict=True)
        ]

    async def get(self, key: str) -> bytes:
        validate_key(key)
        try:
            return await self._run(functools.partial(self._get_sync, key))
        except _MISSING:
            raise ObjectNotFound(f"no object {key!r}") from None
        except OSError as exc:
            raise _storage_error("get", key, exc) from None

    async def stream(
        self, key: str, *, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> AsyncIterator[bytes]:
        validate_key(key)
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        path = self._abs(key)
        try:
            f = await self._run(functools.partial(io.FileIO, path, "r"))
        except _MISSING:
            raise ObjectNotFound(f"no object {key!r}") from None
        except OSError as exc:
            raise _storage_error("stream", key, exc) from None
        try:
            while True:
                try:
                    block = await self._run(functools.partial(f.read, block_size))
                except OSError as exc:
                    raise _storage_error("stream", key, exc) from None
                if not block:
                    return
                yield block
        finally:
            f.close()

    async def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            return await self._run(functools.partial(self._stat_sync, key)) is not None
        except OSError as exc:
            raise _storage_error("stat", key, exc) from None

    async def size(self, key: str) -> int:
        validate_key(key)
        try:
            st = await self._run(functools.partial(self._stat_sync, key))
        except OSError as exc:
            raise _storage_error("stat", key, exc) from None
        if st is None:
            raise ObjectNotFound(f"no object {key!r}")
        return st.st_size

    async def delete(self, key: str) -> None:
        validate_key(key)
        try:
            await self._run(functools.partial(self._delete_sync, key))
        except OSError as exc:
            raise _storage_error("delete", key, exc) from None

    async def delete_prefix(self, prefix: str) -> int:
        require_delete_prefix(prefix)
        try:
            return await self._run(functools.partial(self._delete_prefix_sync, prefix))
        except OSError as exc:
            raise _storage_error("delete_prefix", prefix, exc) from None

    async def list(self, prefix: str) -> AsyncIterator[str]:
        validate_prefix(prefix)
        try:
            keys = await self._run(functools.partial(self._list_sync, prefix))
        except OSError as exc:
            raise _storage_error("list", prefix, exc) from None
        for key in keys:
            yield key

    async def list_modified(self, prefix: str) -> AsyncIterator[tuple[str, dt.datetime]]:
        validate_prefix(prefix)
        try:
            entries = await self._run(
                functools.partial(self._list_entries_sync, prefix, times=True)
            )
        except OSError as exc:
            raise _storage_error("list", prefix, exc) from None
        for key, mtime in entries:
            yield key, dt.datetime.fromtimestamp(mtime, dt.UTC)

    def local_path(self, key: str) -> Path:
        validate_key(key)
        return self._root / key

    async def check(self) -> None:
        try:
            await self._run(self._check_sync)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "unknown error")
            raise StorageUnavailable(f"filesystem storage is not writable: {name}") from None

    async def sweep_temporary(self, older_than_seconds: float) -> int:
        """Delete temporary files (left by a crash mid-put) older than this; return the count.

        Use an age well above the longest put (minutes), so no put in flight loses its file.
        """
        try:
            return await self._run(functools.partial(self._sweep_sync, older_than_seconds))
        except OSError as exc:
            raise _storage_error("sweep", "", exc) from None
