"""Object storage on an S3 API (AWS S3, MinIO, ...) through one long-lived aiobotocore client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ._base import (
    DEFAULT_BLOCK_SIZE,
    ChecksumMismatch,
    ObjectNotFound,
    ObjectStorage,
    StorageError,
    StorageFull,
    StorageMissing,
    StorageUnavailable,
    check_digests,
    require_delete_prefix,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef

__all__ = ["S3Storage"]

# DeleteObjects takes at most 1000 keys per request.
_DELETE_BATCH = 1000
# Below this, hashing on the event loop is cheaper than a hop to a thread.
_THREAD_HASH_THRESHOLD = 64 * 1024

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# No room: MinIO's full disks, a quota.
_FULL_CODES = frozenset({"XMinioStorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded"})
# Error codes that mean "S3 cannot serve us now" (the API answers 503), besides any 5xx: a
# missing bucket or rejected credentials is a deployment problem, not a client's mistake, and
# BadDigest after our own MD5 means the bytes were damaged on the way.
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "BadDigest",
        "InvalidDigest",
        "XAmzContentSHA256Mismatch",
    }
)
_CONNECTION_ERRORS = (
    BotoConnectionError,
    HTTPClientError,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
)
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)
_CAUGHT = (ClientError, BotoCoreError, aiohttp.ClientError, TimeoutError, OSError)


def _translate(exc: BaseException, operation: str, key: str) -> StorageError:
    """Map a botocore/aiohttp error to ours. The message carries the S3 error code and HTTP
    status only: never the server's text, the endpoint or anything from the credentials."""
    where = f"S3 {operation} of {key!r}" if key else f"S3 {operation}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "unknown"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"{where} failed: {code} (HTTP {status})"
        if code == "NoSuchBucket":
            return StorageMissing(message)
        if code in _FULL_CODES:
            return StorageFull(message)
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(message)
        if status >= 500 or code in _UNAVAILABLE_CODES:
            return StorageUnavailable(message)
        return StorageError(message)
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return StorageUnavailable(f"{where} failed: no usable S3 credentials")
    if isinstance(exc, _CONNECTION_ERRORS):
        return StorageUnavailable(f"{where} failed: S3 unreachable ({type(exc).__name__})")
    return StorageError(f"{where} failed: {type(exc).__name__}")


@contextlib.contextmanager
def _translated(operation: str, key: str) -> Iterator[None]:
    try:
        yield
    except _CAUGHT as exc:
        # Not chained: botocore errors can carry request details we do not want in logs.
        raise _translate(exc, operation, key) from None


def _md5_digest(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


class S3Storage(ObjectStorage):
    """Objects in one bucket, optionally under a key ``prefix``.

    Path-style addressing (MinIO, moto, any endpoint without wildcard DNS); standard retry mode
    with ``max_attempts`` attempts in all; ``connect_timeout`` and ``read_timeout`` in seconds.
    Credentials default to the usual AWS chain (environment, profile, instance role) when not
    given. Call :meth:`open` before use (or ``async with``), :meth:`close` at shutdown.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        bucket: str,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        create_bucket: bool = False,
        max_pool_connections: int = 32,
        max_attempts: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        if not bucket:
            raise ValueError("bucket must not be empty")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self._endpoint_url = endpoint_url
        self._bucket = bucket
        self._region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._prefix = f"{prefix}/" if prefix else ""
        self._create_bucket = create_bucket
        self._config = AioConfig(
            region_name=region,
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            # put sends Content-MD5, which S3 checks; skip the extra CRC32 botocore would add
            # (computed on the event loop) and the response-side checksum validation.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: S3Client | None = None
        self._exit_stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        # Never the credentials; only the endpoint's host, in case its URL carries user info.
        host = urlsplit(self._endpoint_url).hostname if self._endpoint_url else None
        return f"S3Storage(endpoint={host!r}, bucket={self._bucket!r}, prefix={self._prefix!r})"

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def client(self) -> S3Client:
        """The aiobotocore client, e.g. to register event hooks; only between open and close."""
        return self._require_client()

    def _require_client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Storage.open() has not been called (or close() has)")
        return self._client

    def _full(self, key: str) -> str:
        return self._prefix + key

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the client (one for the store's lifetime) and, if asked, the bucket."""
        if self._client is not None:
            return
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    region_name=self._region,
                    endpoint_url=self._endpoint_url,
                    aws_access_key_id=self._access_key_id,
                    aws_secret_access_key=self._secret_access_key,
                    config=self._config,
                )
            )
            if self._create_bucket:
                await self._ensure_bucket(client)
        except BaseException:
            await stack.aclose()
            raise
        self._client, self._exit_stack = client, stack

    async def _ensure_bucket(self, client: S3Client) -> None:
        with _translated("head_bucket", ""):
            try:
                await client.head_bucket(Bucket=self._bucket)
                return
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                    raise
            try:
                if self._region == "us-east-1":
                    await client.create_bucket(Bucket=self._bucket)
                else:
                    await client.create_bucket(
                        Bucket=self._bucket,
                        CreateBucketConfiguration={"LocationConstraint": self._region},  # type: ignore[typeddict-item]
                    )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    async def close(self) -> None:
        stack, self._exit_stack, self._client = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()

    # -- the interface -------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        data: bytes | memoryview,
        *,
        md5: str | None = None,
        sha256: str | None = None,
    ) -> None:
        """One PutObject with Content-MD5: S3 rejects the object unless the bytes arrived intact.
        Durable once S3 answers. The MD5 is computed here even when the caller gives it: the
        caller's bytes are checked before they leave (not every S3 server checks Content-MD5);
        a given ``sha256`` is checked in the same step."""
        validate_key(key)
        client = self._require_client()
        body = data if isinstance(data, bytes) else bytes(data)

        def digest_of(body: bytes) -> bytes:
            check_digests(body, md5=None, sha256=sha256)
            return _md5_digest(body)

        if len(body) > _THREAD_HASH_THRESHOLD:
            digest = await asyncio.to_thread(digest_of, body)
        else:
            digest = digest_of(body)
        if md5 is not None and digest.hex() != md5:
            raise ChecksumMismatch("md5")
        with _translated("put", key):
            await client.put_object(
                Bucket=self._bucket,
                Key=self._full(key),
                Body=body,
                ContentMD5=base64.b64encode(digest).decode("ascii"),
            )

    async def get(self, key: str) -> bytes:
        validate_key(key)
        client = self._require_client()
        with _translated("get", key):
            response = await client.get_object(Bucket=self._bucket, Key=self._full(key))
            async with response["Body"] as body:
                return await body.read()

    async def stream(
        self, key: str, *, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> AsyncIterator[bytes]:
        """Blocks are at most ``block_size`` bytes (as they arrive from the network)."""
        validate_key(key)
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        client = self._require_client()
        with _translated("get", key):
            response = await client.get_object(Bucket=self._bucket, Key=self._full(key))
        body = response["Body"]
        try:
            while True:
                with _translated("stream", key):
                    block = await body.read(block_size)
                if not block:
                    return
                yield block
        finally:
            body.close()

    async def exists(self, key: str) -> bool:
        try:
            await self._head(key)
        except ObjectNotFound:
            return False
        return True

    async def size(self, key: str) -> int:
        return await self._head(key)

    async def _head(self, key: str) -> int:
        validate_key(key)
        client = self._require_client()
        with _translated("head", key):
            response = await client.head_object(Bucket=self._bucket, Key=self._full(key))
        return response["ContentLength"]

    async def delete(self, key: str) -> None:
        validate_key(key)
        client = self._require_client()
        with _translated("delete", key):
            await client.delete_object(Bucket=self._bucket, Key=self._full(key))

    async def delete_prefix(self, prefix: str) -> int:
        """Lists the keys page by page and deletes each page with DeleteObjects (<= 1000 keys)."""
        require_delete_prefix(prefix)
        client = self._require_client()
        paginator = client.get_paginator("list_objects_v2")
        deleted = 0
        with _translated("delete_prefix", prefix):
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._full(prefix)):
                keys: list[ObjectIdentifierTypeDef] = [
                    {"Key": obj["Key"]} for obj in page.get("Contents", [])
                ]
                for start in range(0, len(keys), _DELETE_BATCH):
                    batch = keys[start : start + _DELETE_BATCH]
                    response = await client.delete_objects(
                        Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                    errors = response.get("Errors", [])
                    deleted += len(batch) - len(errors)
                    if errors:
                        code = errors[0].get("Code", "unknown")
                        raise StorageUnavailable(
                            f"S3 delete_prefix of {prefix!r}: {len(errors)} of {len(batch)} "
                            f"objects not deleted (first error: {code})"
                        )
        return deleted

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """ListObjectsV2, paginated; S3 returns keys in (UTF-8 byte, here ASCII) order."""
        async for key, _ in self.list_modified(prefix):
            yield key

    async def list_modified(self, prefix: str) -> AsyncIterator[tuple[str, dt.datetime]]:
        """ListObjectsV2 as :meth:`list`, with each object's LastModified."""
        validate_prefix(prefix)
        client = self._require_client()
        paginator = client.get_paginator("list_objects_v2")
        strip = len(self._prefix)
        with _translated("list", prefix):
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._full(prefix)):
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:], obj["LastModified"].astimezone(dt.UTC)

    def local_path(self, key: str) -> Path | None:
        validate_key(key)
        return None

    async def check(self) -> None:
        client = self._require_client()
        try:
            with _translated("head_bucket", ""):
                await client.head_bucket(Bucket=self._bucket)
        except ObjectNotFound:
            raise StorageMissing("S3 bucket does not exist") from None
        except StorageUnavailable:
            raise
        except StorageError as exc:
            raise StorageUnavailable(str(exc)) from None
