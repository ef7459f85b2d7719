"""Fixtures for the storage tests: a real moto S3 server and one store per backend."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relaypacs.storage import FilesystemStorage, ObjectStorage, S3Storage
from tests.servers import moto_server

# moto accepts any credentials; these only have to be present and non-empty.
TEST_ACCESS_KEY_ID = "testing-access-key"
TEST_SECRET_ACCESS_KEY = "testing-secret-key"


def make_s3_storage(endpoint: str, **overrides: Any) -> S3Storage:
    """An S3Storage on a fresh bucket (created on open) of the server at ``endpoint``."""
    options: dict[str, Any] = {
        "endpoint_url": endpoint,
        "bucket": f"test-{uuid.uuid4().hex}",
        "access_key_id": TEST_ACCESS_KEY_ID,
        "secret_access_key": TEST_SECRET_ACCESS_KEY,
        "create_bucket": True,
    }
    options.update(overrides)
    return S3Storage(**options)


async def put_many(storage: ObjectStorage, keys: list[str], data: bytes = b"x") -> None:
    """Put ``data`` under every key, 32 at a time."""
    limit = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with limit:
            await storage.put(key, data)

    await asyncio.gather(*(put(key) for key in keys))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
async def fs_storage(tmp_path: Path) -> AsyncIterator[FilesystemStorage]:
    async with FilesystemStorage(tmp_path / "objects") as store:
        yield store


@pytest.fixture
async def s3_storage(s3_endpoint: str) -> AsyncIterator[S3Storage]:
    async with make_s3_storage(s3_endpoint) as store:
        yield store


@pytest.fixture(params=["fs", "s3"])
def storage(request: pytest.FixtureRequest) -> ObjectStorage:
    """The same tests against both backends, each on a fresh root or bucket."""
    store: ObjectStorage = request.getfixturevalue(f"{request.param}_storage")
    return store
