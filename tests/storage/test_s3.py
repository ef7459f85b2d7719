"""S3 backend specifics, against a real moto server (and a real failing HTTP server)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from relaypacs.storage import ObjectNotFound, S3Storage, StorageError, StorageUnavailable
from tests.servers import LOOPBACK, free_port
from tests.storage.conftest import TEST_ACCESS_KEY_ID, make_s3_storage, put_many

SECRET = "s3cr3t-Do-Not-Leak-8f3a9c"


def assert_no_secret(exc: BaseException, store: S3Storage) -> None:
    for text in (str(exc), repr(exc), repr(store)):
        assert SECRET not in text
        assert TEST_ACCESS_KEY_ID not in text
    assert exc.__cause__ is None
    assert exc.__suppress_context__


class _FailingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with HTTP 500 InternalError, as an S3 endpoint in trouble."""

    requests: list[str]

    def _fail(self) -> None:
        self.requests.append(f"{self.command} {self.path}")
        if self.headers.get("Expect", "").lower() != "100-continue":
            # (with Expect, the client waits for "100 Continue" before sending its body)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<Error><Code>InternalError</Code><Message>We are down</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _fail

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def failing_endpoint() -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    handler = type("Handler", (_FailingHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fast_failing_store(endpoint: str, **overrides: Any) -> S3Storage:
    options: dict[str, Any] = {
        "bucket": "some-bucket",
        "secret_access_key": SECRET,
        "create_bucket": False,
        "max_attempts": 2,
        "connect_timeout": 0.5,
        "read_timeout": 0.5,
    }
    options.update(overrides)
    return make_s3_storage(endpoint, **options)


class TestUnavailable:
    async def test_closed_port(self) -> None:
        # one attempt each (the retries are shown below), so this stays fast
        store = fast_failing_store(f"http://{LOOPBACK}:{free_port()}", max_attempts=1)
        started = time.monotonic()
        async with store:
            for call in (
                store.put("a/b", b"data"),
                store.get("a/b"),
                store.exists("a/b"),
                store.size("a/b"),
                store.delete("a/b"),
                store.delete_prefix("a/"),
                store.check(),
            ):
                with pytest.raises(StorageUnavailable, match="unreachable") as raised:
                    await call
                assert_no_secret(raised.value, store)
            with pytest.raises(StorageUnavailable):
                _ = [key async for key in store.list("a/")]
            with pytest.raises(StorageUnavailable):
                _ = [block async for block in store.stream("a/b")]
        assert time.monotonic() - started < 10

    async def test_closed_port_when_creating_the_bucket(self) -> None:
        store = fast_failing_store(f"http://{LOOPBACK}:{free_port()}", create_bucket=True)
        with pytest.raises(StorageUnavailable) as raised:
            await store.open()
        assert_no_secret(raised.value, store)
        with pytest.raises(RuntimeError, match="open"):
            await store.get("a")

    async def test_5xx_after_retries(self, failing_endpoint: tuple[str, list[str]]) -> None:
        endpoint, requests = failing_endpoint
        async with fast_failing_store(endpoint, max_attempts=2) as store:
            with pytest.raises(StorageUnavailable, match=r"InternalError \(HTTP 500\)") as raised:
                await store.put("a/b", b"data")
            assert_no_secret(raised.value, store)
            assert "We are down" not in str(raised.value)
            assert requests == ["PUT /some-bucket/a/b"] * 2  # path-style, retried once

            with pytest.raises(StorageUnavailable):
                await store.get("a/b")

    async def test_missing_bucket(self, s3_endpoint: str) -> None:
        async with make_s3_storage(s3_endpoint, create_bucket=False) as store:
            with pytest.raises(StorageUnavailable, match="does not exist"):
                await store.check()
            with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
                await store.put("a", b"1")


class TestRequests:
    async def test_put_sends_content_md5(self, s3_storage: S3Storage) -> None:
        sent: list[str | None] = []

        def record(request: Any, **kwargs: Any) -> None:
            sent.append(request.headers.get("Content-MD5"))

        data = b"chunk bytes" * 10000
        s3_storage.client.meta.events.register("before-send.s3.PutObject", record)
        await s3_storage.put("u/0/0-a", data)
        expected = base64.b64encode(hashlib.md5(data).digest()).decode()
        assert [value.decode() if isinstance(value, bytes) else value for value in sent] == [
            expected
        ]

    async def test_delete_prefix_batches_of_1000(self, s3_storage: S3Storage) -> None:
        batches: list[int] = []

        def record(params: dict[str, Any], **kwargs: Any) -> None:
            batches.append(len(params["Delete"]["Objects"]))

        await put_many(s3_storage, [f"up/{i // 100}/{i}" for i in range(1001)])
        s3_storage.client.meta.events.register("before-parameter-build.s3.DeleteObjects", record)
        assert await s3_storage.delete_prefix("up/") == 1001
        assert batches == [1000, 1]

    async def test_one_client_for_the_lifetime(self, s3_storage: S3Storage) -> None:
        client = s3_storage.client
        await s3_storage.open()  # idempotent
        await s3_storage.put("a", b"1")
        await s3_storage.get("a")
        assert s3_storage.client is client


class TestPrefix:
    @pytest.fixture
    async def bucket(self, s3_endpoint: str) -> AsyncIterator[S3Storage]:
        async with make_s3_storage(s3_endpoint) as whole:
            yield whole

    async def test_stores_under_a_prefix_are_separate(
        self, s3_endpoint: str, bucket: S3Storage
    ) -> None:
        async with (
            make_s3_storage(s3_endpoint, bucket=bucket.bucket, prefix="tenant-a") as a,
            make_s3_storage(s3_endpoint, bucket=bucket.bucket, prefix="/tenant-b/") as b,
        ):
            await a.put("k/1", b"a")
            await b.put("k/1", b"b")
            assert [key async for key in a.list("")] == ["k/1"]
            assert await b.get("k/1") == b"b"
            assert [key async for key in bucket.list("")] == ["tenant-a/k/1", "tenant-b/k/1"]
            assert await a.delete_prefix("k/") == 1
            assert await b.exists("k/1")
            with pytest.raises(ObjectNotFound):
                await a.get("k/1")

    def test_bad_prefix(self) -> None:
        with pytest.raises(ValueError, match="invalid storage key"):
            S3Storage(endpoint_url=None, bucket="b", prefix="../other")


class TestConstruction:
    def test_credentials_come_in_pairs(self) -> None:
        with pytest.raises(ValueError, match="both"):
            S3Storage(endpoint_url=None, bucket="b", access_key_id="x")

    def test_repr_has_no_credentials(self) -> None:
        store = S3Storage(
            endpoint_url="https://user:pw@s3.example.org",
            bucket="b",
            access_key_id="AKIAEXAMPLE",
            secret_access_key=SECRET,
        )
        assert SECRET not in repr(store)
        assert "AKIAEXAMPLE" not in repr(store)
        assert "pw" not in repr(store)

    async def test_error_types(self, s3_storage: S3Storage) -> None:
        with pytest.raises(ObjectNotFound) as raised:
            await s3_storage.get("missing")
        assert isinstance(raised.value, StorageError)
        assert not isinstance(raised.value, StorageUnavailable)
