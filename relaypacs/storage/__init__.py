"""Object storage: one interface (:class:`ObjectStorage`), a filesystem and an S3 implementation.

Exceptions: :class:`StorageError` is the base; :class:`ObjectNotFound` (missing key) and
:class:`StorageUnavailable` (backend unreachable or failing, answered with 503) derive from it.
Invalid keys raise ``ValueError`` before any I/O.
"""

from ._base import (
    DEFAULT_BLOCK_SIZE,
    ObjectNotFound,
    ObjectStorage,
    StorageError,
    StorageUnavailable,
    validate_key,
    validate_prefix,
)
from ._filesystem import FilesystemStorage
from ._s3 import S3Storage

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "FilesystemStorage",
    "ObjectNotFound",
    "ObjectStorage",
    "S3Storage",
    "StorageError",
    "StorageUnavailable",
    "validate_key",
    "validate_prefix",
]
