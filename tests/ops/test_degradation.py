"""Graceful degradation, each with the real dependency stopped, filled or removed under a
running gateway: the answers while it is gone, nothing acknowledged lost, and the recovery
without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import pytest

from tests.api.conftest import Account
from tests.api.uploading import Study, chunks_of, complete, init, make_study, put_chunk
from tests.ops.conftest import (
    account,
    client_of,
    closed_port,
    metric_value,
    ops_settings,
    started,
)
from tests.ops.postgres import own_postgres
from tests.servers import free_port, moto_server, redis_server, wait_for_http

API = "/api/v1"
Chunk = tuple[int, int, bytes]


def all_chunks(study: Study) -> list[Chunk]:
    return [
        (file_index, chunk_index, data)
        for file_index, content in enumerate(study.files)
        for chunk_index, data in enumerate(chunks_of(content))
    ]


async def send(
    client: httpx.AsyncClient, who: Account, upload_id: str, chunk: Chunk
) -> httpx.Response:
    return await put_chunk(client, who, upload_id, *chunk)


async def missing_chunks(client: httpx.AsyncClient, who: Account, upload_id: str) -> int:
    response = await client.get(f"{API}/uploads/{upload_id}", headers=who.headers)
    assert response.status_code == 200, response.text
    return sum(len(f["missing_chunks"]) for f in response.json()["files"])


def code_of(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


class TestDatabaseDown:
    async def test_503_while_it_is_down_then_the_upload_completes(self, tmp_path: Path) -> None:
        with own_postgres() as postgres:
            postgres.create_database("gateway")
            settings = ops_settings(tmp_path, database_url=postgres.url("gateway"))
            async with started(settings) as app, client_of(app) as client:
                refusals_before = metric_value(
                    (await client.get("/metrics")).text, "relaypacs_database_unavailable_total"
                )
                clinician = await account(app, client)
                study = make_study(2, rows=400, columns=400)
                created = await init(client, clinician, study)
                assert created.status_code == 201, created.text
                upload_id = created.json()["id"]
                chunks = all_chunks(study)
                half = len(chunks) // 2
                for chunk in chunks[:half]:
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200

                postgres.stop()
                refused = await send(client, clinician, upload_id, chunks[half])
                assert refused.status_code == 503, refused.text
                assert code_of(refused) == "database_unavailable"
                assert refused.headers["retry-after"] == "5"
                status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
                assert status.status_code == 503
                assert code_of(status) == "database_unavailable"
                ready = await client.get("/health/ready")
                assert ready.status_code == 503
                assert not ready.json()["checks"]["database"]["ok"]
                assert (await client.get("/health/live")).status_code == 200
                scraped = (await client.get("/metrics")).text
                refusals = metric_value(scraped, "relaypacs_database_unavailable_total")
                assert refusals - refusals_before >= 2  # the chunk and the status

                postgres.start()  # the same gateway, not restarted
                assert (await client.get("/health/ready")).status_code == 200
                assert await missing_chunks(client, clinician, upload_id) == len(chunks) - half
                for chunk in chunks[half:]:
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200
                done = await complete(client, clinician, upload_id)
                assert done.status_code == 202, done.text
                assert done.json()["received_bytes"] == sum(len(f) for f in study.files)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[None]:
    """A real filesystem of `size` mounted at `path` (tmpfs): writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)])
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow_disk(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


class TestStorageFull:
    async def test_507_nothing_acknowledged_lost_and_the_operator_warned(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = ops_settings(tmp_path / "data")
        with small_disk(settings.storage_root, "1m"):
            async with started(settings) as app, client_of(app) as client:
                full_before = metric_value(
                    (await client.get("/metrics")).text, "relaypacs_storage_full_total"
                )
                clinician = await account(app, client)
                study = make_study(3, rows=512, columns=512)  # 1.5 MB
                upload_id = (await init(client, clinician, study)).json()["id"]
                chunks = all_chunks(study)
                acknowledged = 0
                refused: httpx.Response | None = None
                for chunk in chunks:
                    response = await send(client, clinician, upload_id, chunk)
                    if response.status_code != 200:
                        refused = response
                        break
                    acknowledged += 1
                assert refused is not None, "a 1 MB disk took 1.5 MB"
                assert refused.status_code == 507, refused.text
                assert code_of(refused) == "storage_full"
                assert refused.headers["retry-after"] == "60"
                assert "object storage is full" in caplog.text
                scraped = (await client.get("/metrics")).text
                assert metric_value(scraped, "relaypacs_storage_full_total") - full_before == 1
                # every chunk acknowledged is there; the refused one is asked for again
                assert await missing_chunks(client, clinician, upload_id) == (
                    len(chunks) - acknowledged
                )

                grow_disk(settings.storage_root, "16m")  # the operator made room
                for chunk in chunks[acknowledged:]:
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200
                done = await complete(client, clinician, upload_id)
                assert done.status_code == 202, done.text


class TestBucketMissing:
    async def test_a_clear_error_not_a_retry_later(self, tmp_path: Path) -> None:
        with moto_server() as endpoint:
            settings = ops_settings(
                tmp_path,
                storage="s3",
                s3_endpoint_url=endpoint,
                s3_bucket="gateway-objects",
                s3_access_key_id="test",
                s3_secret_access_key="test",
                s3_create_bucket=True,
            )
            async with started(settings) as app, client_of(app) as client:
                clinician = await account(app, client)
                study = make_study(1)
                upload_id = (await init(client, clinician, study)).json()["id"]
                s3 = boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    aws_access_key_id="test",
                    aws_secret_access_key="test",
                    region_name="us-east-1",
                )
                s3.delete_bucket(Bucket="gateway-objects")
                refused = await send(client, clinician, upload_id, all_chunks(study)[0])
                assert refused.status_code == 503, refused.text
                assert code_of(refused) == "storage_missing"
                assert "retry-after" not in refused.headers
                assert "operator" in refused.json()["error"]["message"]
                ready = await client.get("/health/ready")
                assert ready.status_code == 503
                assert ready.json()["checks"]["storage"]["error"] == "StorageMissing"
                # the status is still readable: it lives in the database
                status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
                assert status.status_code == 200


class RestartableS3:
    """moto's S3 server on a fixed loopback port, which a test stops and starts again (moto
    keeps everything in memory: it comes back empty, like a store that lost its data)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_http(f"{self.endpoint}/moto-api/", timeout=30, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )


class TestS3DownThenBackEmpty:
    async def test_503_while_down_status_readable_and_the_upload_completes_after(
        self, tmp_path: Path
    ) -> None:
        s3 = RestartableS3()
        s3.start()
        try:
            settings = ops_settings(
                tmp_path,
                storage="s3",
                s3_endpoint_url=s3.endpoint,
                s3_bucket="gateway-objects",
                s3_access_key_id="test",
                s3_secret_access_key="test",
                s3_create_bucket=True,
            )
            async with started(settings) as app, client_of(app) as client:
                clinician = await account(app, client)
                study = make_study(2, rows=400, columns=400)
                upload_id = (await init(client, clinician, study)).json()["id"]
                chunks = all_chunks(study)
                half = len(chunks) // 2
                for chunk in chunks[:half]:
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200

                s3.stop()
                refused = await send(client, clinician, upload_id, chunks[half])
                assert refused.status_code == 503, refused.text
                assert code_of(refused) == "storage_unavailable"
                assert refused.headers["retry-after"] == "5"
                # the status is read from the database: it says what is stored
                assert await missing_chunks(client, clinician, upload_id) == len(chunks) - half
                ready = await client.get("/health/ready")
                assert ready.status_code == 503
                assert not ready.json()["checks"]["storage"]["ok"]

                # S3 back, without anything it held; the operator recreates the bucket
                s3.start()
                s3.client().create_bucket(Bucket="gateway-objects")
                assert (await client.get("/health/ready")).status_code == 200
                for chunk in chunks[half:]:
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200
                lost = await complete(client, clinician, upload_id)
                assert lost.status_code == 409, lost.text
                assert lost.json()["error"]["details"]["lost"] is True
                assert await missing_chunks(client, clinician, upload_id) == half
                for chunk in chunks[:half]:  # what the status asks for again
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200
                done = await complete(client, clinician, upload_id)
                assert done.status_code == 202, done.text
        finally:
            s3.stop()


class TestStorageComesBackEmpty:
    async def test_lost_chunks_are_asked_for_again_and_the_upload_completes(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        with moto_server() as endpoint:
            settings = ops_settings(
                tmp_path,
                storage="s3",
                s3_endpoint_url=endpoint,
                s3_bucket="gateway-objects",
                s3_access_key_id="test",
                s3_secret_access_key="test",
                s3_create_bucket=True,
            )
            async with started(settings) as app, client_of(app) as client:
                lost_before = metric_value(
                    (await client.get("/metrics")).text, "relaypacs_upload_chunks_lost_total"
                )  # the process's counter: other tests counted too
                clinician = await account(app, client)
                study = make_study(2, rows=400, columns=400)
                upload_id = (await init(client, clinician, study)).json()["id"]
                chunks = all_chunks(study)
                for chunk in chunks:
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200
                # S3 comes back from a failure without what it had acknowledged: the bucket
                # deleted and created again, empty
                s3 = boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    aws_access_key_id="test",
                    aws_secret_access_key="test",
                    region_name="us-east-1",
                )
                for item in s3.list_objects_v2(Bucket="gateway-objects").get("Contents", []):
                    s3.delete_object(Bucket="gateway-objects", Key=item["Key"])
                s3.delete_bucket(Bucket="gateway-objects")
                s3.create_bucket(Bucket="gateway-objects")

                refused = await complete(client, clinician, upload_id)
                assert refused.status_code == 409, refused.text
                assert code_of(refused) == "upload_incomplete"
                details = refused.json()["error"]["details"]
                assert details["lost"] is True
                assert sum(len(f["missing_chunks"]) for f in details["missing"]) == len(chunks)
                assert "storage lost" in caplog.text
                # the status asks for them again; the client sends them; the upload completes
                assert await missing_chunks(client, clinician, upload_id) == len(chunks)
                for chunk in chunks:
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200
                done = await complete(client, clinician, upload_id)
                assert done.status_code == 202, done.text
                assert done.json()["status"] == "validated"
                scraped = (await client.get("/metrics")).text
                lost_now = metric_value(scraped, "relaypacs_upload_chunks_lost_total")
                assert lost_now - lost_before == len(chunks)


class TestRedisDown:
    async def test_uploads_go_on_and_readiness_says_degraded(
        self, tmp_path: Path, postgres_url: str
    ) -> None:
        with redis_server() as redis:
            settings = ops_settings(
                tmp_path, database_url=postgres_url, redis_url=redis.url, redis_prefix="ops-t:"
            )
            async with started(settings) as app, client_of(app) as client:
                clinician = await account(app, client)
                redis.stop()
                study = make_study(2)
                upload_id = (await init(client, clinician, study)).json()["id"]
                for chunk in all_chunks(study):
                    assert (await send(client, clinician, upload_id, chunk)).status_code == 200
                done = await complete(client, clinician, upload_id)
                assert done.status_code == 202, done.text
                ready = await client.get("/health/ready")
                assert ready.status_code == 200
                assert ready.json()["status"] == "degraded"
                assert not ready.json()["checks"]["redis"]["ok"]


async def _scrape_until(client: httpx.AsyncClient, name: str, **labels: str) -> str:
    """The metrics once `name` is above zero (or after 10 s)."""
    for _ in range(100):
        scraped = (await client.get("/metrics")).text
        if metric_value(scraped, name, **labels) > 0:
            return scraped
        await asyncio.sleep(0.1)
    return scraped


class TestPacsDown:
    async def test_studies_queue_and_readiness_says_so(self, tmp_path: Path) -> None:
        settings = ops_settings(
            tmp_path,
            pacs_url=f"http://127.0.0.1:{closed_port()}/dicom-web",
            forward_retry_delays=[0.2],
            forward_retry_interval=60,
            breaker_failures=1,
        )
        async with started(settings) as app, client_of(app) as client:
            clinician = await account(app, client)
            study = make_study(2)
            upload_id = (await init(client, clinician, study)).json()["id"]
            for chunk in all_chunks(study):
                assert (await send(client, clinician, upload_id, chunk)).status_code == 200
            done = await complete(client, clinician, upload_id)
            assert done.status_code == 202, done.text
            scraped = await _scrape_until(client, "relaypacs_forward_breaker_open", target="pacs")
            assert metric_value(scraped, "relaypacs_forward_breaker_open", target="pacs") == 1
            assert metric_value(scraped, "relaypacs_pacs_request_errors_total", target="pacs") > 0
            assert metric_value(scraped, "relaypacs_forward_queue_jobs") == 1
            assert metric_value(scraped, "relaypacs_forward_oldest_job_age_seconds") > 0
            assert (
                metric_value(scraped, "relaypacs_uploads", status="queued")
                + metric_value(scraped, "relaypacs_uploads", status="forwarding")
                == 1
            )
            status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
            assert status.json()["status"] in ("queued", "forwarding")
            ready = await client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["checks"]["pacs:pacs"]["error"] == "ConnectError"


class TestScheduledCheckOfStoredChunks:
    async def test_chunks_lost_before_complete_are_asked_for_again(self, tmp_path: Path) -> None:
        from relaypacs.state import app_state
        from relaypacs.uploads.completion import check_stored_chunks

        settings = ops_settings(tmp_path)
        async with started(settings) as app, client_of(app) as client:
            clinician = await account(app, client)
            study = make_study(2, rows=400, columns=400)
            upload_id = (await init(client, clinician, study)).json()["id"]
            chunks = all_chunks(study)
            for chunk in chunks:
                assert (await send(client, clinician, upload_id, chunk)).status_code == 200
            state = app_state(app)
            assert await check_stored_chunks(state.db, state.storage) == 0
            # the filesystem store restored from a copy older than the last two chunks
            objects = sorted(
                (p for p in settings.storage_root.rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_mtime_ns,
            )
            for path in objects[-2:]:
                path.unlink()
            assert await check_stored_chunks(state.db, state.storage) == 2
            assert await missing_chunks(client, clinician, upload_id) == 2
            for chunk in chunks:  # the client sends what the status asks for (here: all again)
                assert (await send(client, clinician, upload_id, chunk)).status_code == 200
            assert await missing_chunks(client, clinician, upload_id) == 0
            done = await complete(client, clinician, upload_id)
            assert done.status_code == 202, done.text
