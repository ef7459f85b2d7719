"""Object storage: one interface (:class:`ObjectStorage`), a filesystem and an S3 implementation.

Exceptions: :class:`StorageError` is the base; :class:`ObjectNotFound` (missing key) and
:class:`StorageUnavailable` (backend unreachable or failing, answered with 503) derive from it;
:class:`StorageFull` (no room: 507) and :class:`StorageMissing` (no bucket: 503 with its own code)
from that.
Invalid keys raise ``ValueError`` before any I/O.
"""

from typing import TYPE_CHECKING, Any

from ._base import (
    DEFAULT_BLOCK_SIZE,
    ChecksumMismatch,
    ObjectNotFound,
    ObjectStorage,
    StorageError,
    StorageFull,
    StorageMissing,
    StorageUnavailable,
    validate_key,
    validate_prefix,
)
from ._filesystem import FilesystemStorage

if TYPE_CHECKING:
    from ._s3 import S3Storage


def __getattr__(name: str) -> Any:
    # aiobotocore (botocore) costs ~35 MiB of memory: loaded only when S3 is used.
    if name == "S3Storage":
        from ._s3 import S3Storage

        return S3Storage
    raise AttributeError(name)


__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "ChecksumMismatch",
    "FilesystemStorage",
    "ObjectNotFound",
    "ObjectStorage",
    "S3Storage",
    "StorageError",
    "StorageFull",
    "StorageMissing",
    "StorageUnavailable",
    "validate_key",
    "validate_prefix",
]
