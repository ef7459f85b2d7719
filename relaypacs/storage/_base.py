"""The object-storage interface, its exception tree and the key rules shared by every backend."""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "MAX_KEY_LENGTH",
    "ObjectNotFound",
    "ObjectStorage",
    "StorageError",
    "StorageUnavailable",
    "require_delete_prefix",
    "validate_key",
    "validate_prefix",
]

DEFAULT_BLOCK_SIZE = 1 << 20
# S3 limits keys to 1024 bytes of UTF-8; every allowed character is one byte.
MAX_KEY_LENGTH = 1024
# Most filesystems limit one path component to 255 bytes.
MAX_SEGMENT_LENGTH = 255

# One segment: allowed characters only, and never starting with "." (this excludes "." and "..",
# and keeps names starting with a dot free for the filesystem backend's temporary files).
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_KEY_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")


class StorageError(Exception):
    """Base of every storage error. Messages never carry credentials, object bytes or PHI."""


class ObjectNotFound(StorageError):
    """The key does not name a stored object."""


class ChecksumMismatch(StorageError):
    """The bytes given to `put` do not have the MD5 or SHA-256 the caller said they have:
    nothing was stored. ``algorithm`` says which ("md5" or "sha256")."""

    def __init__(self, algorithm: str) -> None:
        super().__init__(f"the bytes do not have the declared {algorithm}")
        self.algorithm = algorithm


def check_digests(data: bytes | memoryview, *, md5: str | None, sha256: str | None) -> None:
    """Raise ChecksumMismatch unless ``data`` has the given digests (hex; None: not checked).
    Blocking for large data: hashlib releases the GIL, call it from a thread."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ChecksumMismatch("sha256")
    if md5 is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
        raise ChecksumMismatch("md5")


class StorageUnavailable(StorageError):
    """The backend is unreachable or failing (after retries); the API answers 503."""


class StorageFull(StorageUnavailable):
    """The backend has no room for the object (a full disk or quota, MinIO's storage full):
    nothing was stored; the API answers 507 and the operator is warned."""


class StorageMissing(StorageUnavailable):
    """The bucket (or the storage's root) does not exist: a deployment problem that waiting
    does not fix; the API answers 503 with its own code, and the operator is told."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise ``ValueError``.

    A key is one or more ``/``-separated segments of ``[A-Za-z0-9._-]``; no segment is empty or
    starts with ``.`` (so no ``.``/``..`` segments, no absolute path, no trailing slash). Keys are
    built by our own code; this is the guard that stops a bug from escaping the storage root.
    The message never echoes the key (it might carry a file name, which can carry PHI).
    """
    if not isinstance(key, str):
        raise TypeError("storage key must be a str")
    if not key:
        raise ValueError("invalid storage key: empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid storage key: longer than {MAX_KEY_LENGTH} characters")
    # fullmatch, not match: "$" would accept a trailing newline.
    if _KEY_RE.fullmatch(key) is None:
        raise ValueError(
            "invalid storage key: only [A-Za-z0-9._-] segments separated by '/', "
            "none empty or starting with '.'"
        )
    if any(len(segment) > MAX_SEGMENT_LENGTH for segment in key.split("/")):
        raise ValueError(
            f"invalid storage key: a segment is longer than {MAX_SEGMENT_LENGTH} characters"
        )
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid listing prefix, else raise ``ValueError``.

    A prefix is ``""`` (everything), a valid key (a string prefix, as on S3: ``"uploads/a"``
    also matches ``"uploads/ab/0"``), or a valid key followed by ``/`` (one "directory").
    """
    if not isinstance(prefix, str):
        raise TypeError("storage prefix must be a str")
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


class ObjectStorage(abc.ABC):
    """Flat key -> bytes store.

    Keys follow :func:`validate_key`; every method validates its key before any I/O.
    Failures raise :class:`StorageError` subclasses: :class:`ObjectNotFound` for a missing key,
    :class:`StorageUnavailable` when the backend cannot be reached or keeps failing.

    Use as ``async with storage:`` or call :meth:`open` and :meth:`close`.
    """

    async def open(self) -> None:  # noqa: B027 - optional hook, a no-op where nothing is needed
        """Acquire resources (network clients). Call once before use."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources. The store is unusable afterwards."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def put(
        self,
        key: str,
        data: bytes | memoryview,
        *,
        md5: str | None = None,
        sha256: str | None = None,
    ) -> None:
        """Store ``data`` under ``key``, replacing any previous object.

        Returns only once the bytes are durable. Atomic: a reader sees the old object or the new
        one, never a partial one; a failed put leaves the previous object (or nothing). With
        ``md5`` and/or ``sha256`` (hex), the bytes are checked against them first and
        :class:`ChecksumMismatch` is raised, nothing stored, if they differ (in the same step as
        the write: one hop to a thread for the filesystem; S3 also gets the Content-MD5).
        """

    async def put_many(
        self, items: Sequence[tuple[str, bytes | memoryview, str | None]]
    ) -> list[BaseException | None]:
        """Store several objects, each as :meth:`put` with its ``sha256`` (or None): durable
        when this returns. Each item's outcome, in order: None (stored) or its exception
        (:class:`ChecksumMismatch`, a :class:`StorageError`); one item's failure stores the
        others all the same. This default puts them concurrently; a store may do better (the
        filesystem syncs their directory once for all)."""
        results = await asyncio.gather(
            *(self.put(key, data, sha256=sha256) for key, data, sha256 in items),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # a cancellation, not an item's failure
        return [r if isinstance(r, BaseException) else None for r in results]

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """Return the whole object. Raises :class:`ObjectNotFound`."""

    @abc.abstractmethod
    def stream(self, key: str, *, block_size: int = DEFAULT_BLOCK_SIZE) -> AsyncIterator[bytes]:
        """Yield the object in blocks of at most ``block_size`` bytes.

        :class:`ObjectNotFound` is raised on the first iteration, not by the call. Close an
        abandoned iterator (``contextlib.aclosing``) to release its file or connection promptly.
        """

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether ``key`` names a stored object."""

    @abc.abstractmethod
    async def size(self, key: str) -> int:
        """Size of the object in bytes. Raises :class:`ObjectNotFound`."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete the object; a missing key is not an error."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; return how many were deleted.

        ``prefix`` must not be empty (use a trailing ``/`` to mean one "directory").
        """

    @abc.abstractmethod
    def list(self, prefix: str) -> AsyncIterator[str]:
        """Yield the keys starting with ``prefix`` (a string prefix, as on S3), sorted.

        The order is the string order of the keys (``"0/10-x"`` before ``"0/2-x"``): callers that
        need numeric order (chunks) sort themselves.
        """

    @abc.abstractmethod
    def list_modified(self, prefix: str) -> AsyncIterator[tuple[str, dt.datetime]]:
        """Yield ``(key, last modified)`` for the keys starting with ``prefix``, sorted as
        :meth:`list`; the time (UTC) is when the object was last put (the file's mtime, S3's
        LastModified, to the second there). For sweeps that must leave recent objects alone."""

    @abc.abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The object's file for zero-copy reads (``sendfile``), or ``None`` if not on a local disk.

        No I/O: the file may not exist.
        """

    @abc.abstractmethod
    async def check(self) -> None:
        """Readiness probe: return if the backend can serve, else raise StorageUnavailable."""


def require_delete_prefix(prefix: str) -> str:
    """Validate a prefix for ``delete_prefix``: like :func:`validate_prefix`, but never empty."""
    validate_prefix(prefix)
    if not prefix:
        raise ValueError("delete_prefix needs a non-empty prefix")
    return prefix
