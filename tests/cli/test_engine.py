"""The upload engine and API client against an in-memory gateway (no real server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from relaypacs.client import (
    AuthenticationError,
    GatewayClient,
    NullProgress,
    RetryPolicy,
    ServerUnreachableError,
    StudyFile,
    StudyPlan,
    StudyStatus,
    UploadOptions,
    run_upload,
    upload_study,
)
from relaypacs.devtools.synth import write_study
from tests.cli.fakegateway import FakeGateway

CHUNK = 64 * 1024


def make_plan(directory: Path, sizes: list[int], uid: str = "1.2.3") -> StudyPlan:
    files = []
    for i, size in enumerate(sizes):
        path = directory / f"IM{i:04d}"
        path.write_bytes(os.urandom(size))
        st = path.stat()
        files.append(
            StudyFile(
                name=f"DICOM/IM{i:04d}",
                path=path,
                size=size,
                mtime_ns=st.st_mtime_ns,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                sop_instance_uid=f"{uid}.{i}",
            )
        )
    return StudyPlan(
        study_instance_uid=uid,
        metadata={"modality": "CT"},
        files=files,
        modalities=["CT"],
        study_date="20260101",
    )


async def _no_sleep(_: float) -> None:
    return None


def make_client(
    gateway: FakeGateway, *, retries: int = 8, password: str = "secret"
) -> GatewayClient:
    return GatewayClient(
        "http://gateway.test",
        username="alice",
        password=password,
        retry=RetryPolicy(retries=retries),
        transport=gateway.transport(),
        sleep=_no_sleep,
    )


class TestUploadStudy:
    async def test_uploads_every_chunk_then_completes(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        plan = make_plan(tmp_path, [CHUNK * 3 + 17, 10, CHUNK])
        async with make_client(gateway) as client:
            result = await upload_study(client, plan, options=UploadOptions(parallel=3))
        assert result.status is StudyStatus.VALIDATED
        assert result.chunks_sent == 4 + 1 + 1
        assert result.bytes_sent == plan.total_bytes
        assert result.bytes_skipped == 0
        assert sorted(gateway.chunk_puts) == sorted(set(gateway.chunk_puts))

    async def test_a_gateway_without_chunk_batches_gets_single_chunks(self, tmp_path: Path) -> None:
        """The fake gateway has no chunk batches (404 not_found, as a gateway from before
        them): the first batch falls back to its chunks one by one, and no other is tried."""
        gateway = FakeGateway(chunk_size=CHUNK)
        plan = make_plan(tmp_path, [1000] * 12 + [CHUNK * 2])
        batch_posts = 0
        handle = gateway.handle

        def counting(request: httpx.Request) -> httpx.Response:
            nonlocal batch_posts
            batch_posts += request.url.path.endswith("/chunks:batch")
            return handle(request)

        gateway.handle = counting  # type: ignore[method-assign]
        async with make_client(gateway) as client:
            result = await upload_study(client, plan, options=UploadOptions(parallel=1))
        assert result.status is StudyStatus.VALIDATED
        assert result.chunks_sent == 12 + 2
        assert result.batches_sent == 0
        assert result.bytes_sent == plan.total_bytes
        assert batch_posts == 1
        assert sorted(gateway.chunk_puts) == [(i, 0) for i in range(12)] + [(12, 0), (12, 1)]

    async def test_resume_sends_only_missing_chunks(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        plan = make_plan(tmp_path, [CHUNK * 4, CHUNK * 2])
        # A first run that died after 3 chunks.
        gateway.chunk_faults = [lambda: httpx.Response(200, json={})] * 0
        async with make_client(gateway) as client:
            start = await client.start_upload(plan.manifest())
            for file_index, chunk_index in [(0, 0), (0, 2), (1, 1)]:
                offset = chunk_index * CHUNK
                data = plan.files[file_index].path.read_bytes()[offset : offset + CHUNK]
                await client.put_chunk(start.upload.id, file_index, chunk_index, data)
            gateway.chunk_puts.clear()
            result = await upload_study(client, plan)
        assert result.status is StudyStatus.VALIDATED
        assert sorted(gateway.chunk_puts) == [(0, 1), (0, 3), (1, 0)]
        assert result.chunks_sent == 3
        assert result.chunks_already_stored == 0
        assert result.bytes_skipped == 3 * CHUNK

    async def test_already_delivered_is_not_a_failure(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        plan = make_plan(tmp_path, [1000, 2000])
        async with make_client(gateway) as client:
            first = await upload_study(client, plan)
            gateway.chunk_puts.clear()
            second = await upload_study(client, plan)
        assert first.status is StudyStatus.VALIDATED
        assert second.status is StudyStatus.ALREADY_DELIVERED
        assert second.upload_id == first.upload_id
        assert second.bytes_skipped == plan.total_bytes
        assert gateway.chunk_puts == []

    async def test_retries_5xx_429_and_network_errors(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        gateway.chunk_faults = [
            lambda: httpx.Response(503, headers={"Retry-After": "1"}),
            lambda: httpx.Response(429, headers={"Retry-After": "2"}),
            lambda: httpx.Response(500),
            lambda: httpx.ConnectError("cut"),
            lambda: httpx.ReadTimeout("slow"),
        ]
        plan = make_plan(tmp_path, [CHUNK * 2])
        async with make_client(gateway) as client:
            result = await upload_study(client, plan, options=UploadOptions(parallel=1))
            assert client.retries_done == 5
        assert result.status is StudyStatus.VALIDATED
        assert result.chunks_sent == 2

    async def test_gives_up_after_retries(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        gateway.chunk_faults = [lambda: httpx.ConnectError("down")] * 100
        plan = make_plan(tmp_path, [CHUNK])
        async with make_client(gateway, retries=3) as client:
            result = await upload_study(client, plan)
        assert result.status is StudyStatus.INTERRUPTED
        assert result.abort == "unreachable"
        assert "gave up after 3 retries" in (result.message or "")

    async def test_logs_in_again_once_when_the_token_expired(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        plan = make_plan(tmp_path, [CHUNK * 3])

        def expire() -> httpx.Response:
            gateway.expire_tokens()
            return httpx.Response(401, json={"error": {"code": "token_expired"}})

        gateway.chunk_faults = [expire]
        async with make_client(gateway) as client:
            await client.login()
            result = await upload_study(client, plan, options=UploadOptions(parallel=2))
        assert result.status is StudyStatus.VALIDATED
        assert gateway.logins == 2

    async def test_wrong_password_is_an_authentication_error(self) -> None:
        gateway = FakeGateway()
        async with make_client(gateway, password="wrong") as client:
            with pytest.raises(AuthenticationError):
                await client.login()

    async def test_incomplete_at_complete_sends_the_listed_chunks(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        gateway.lose_before_complete = [(0, 1)]
        plan = make_plan(tmp_path, [CHUNK * 2])
        async with make_client(gateway) as client:
            result = await upload_study(client, plan)
        assert result.status is StudyStatus.VALIDATED
        assert gateway.chunk_puts.count((0, 1)) == 2
        assert result.chunks_sent == 3

    @pytest.mark.parametrize("strict", [False, True])
    async def test_refusal_is_reported_per_file_by_name(self, tmp_path: Path, strict: bool) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        gateway.reject = {1: "dicom_preamble_executable"}
        plan = make_plan(tmp_path, [100, 200])
        plan.all_or_nothing = strict
        async with make_client(gateway) as client:
            result = await upload_study(client, plan)
        # By default the study goes on without its refused file; strict, it is rejected.
        assert result.status is (StudyStatus.REJECTED if strict else StudyStatus.PARTIAL)
        assert result.accepted is not strict
        assert result.instances == (0 if strict else 1)
        assert [(e.name, e.code) for e in result.errors] == [
            ("DICOM/IM0001", "dicom_preamble_executable")
        ]

    async def test_permanent_chunk_error_fails_the_file_without_completing(
        self, tmp_path: Path
    ) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        gateway.chunk_faults = [
            lambda: httpx.Response(413, json={"error": {"code": "chunk_too_large"}})
        ]
        plan = make_plan(tmp_path, [CHUNK, CHUNK])
        async with make_client(gateway) as client:
            result = await upload_study(client, plan, options=UploadOptions(parallel=1))
        assert result.status is StudyStatus.FAILED
        assert [e.code for e in result.errors] == ["chunk_too_large"]
        assert all(u.status == "pending" for u in gateway.uploads.values())

    async def test_file_changed_since_hashing_is_reported(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        plan = make_plan(tmp_path, [CHUNK, 500])
        plan.files[1].path.write_bytes(os.urandom(501))
        async with make_client(gateway) as client:
            result = await upload_study(client, plan)
        assert result.status is StudyStatus.FAILED
        assert [(e.name, e.code) for e in result.errors] == [("DICOM/IM0001", "file_changed")]

    async def test_unreachable_server(self) -> None:
        def down(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused")

        client = GatewayClient(
            "http://gateway.test",
            username="a",
            password="b",
            retry=RetryPolicy(retries=2),
            transport=httpx.MockTransport(down),
            sleep=_no_sleep,
        )
        async with client:
            with pytest.raises(ServerUnreachableError):
                await client.login()

    async def test_upload_gone_on_the_server_is_started_again_once(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        plan = make_plan(tmp_path, [CHUNK * 2])

        def vanish() -> httpx.Response:
            gateway.uploads.clear()
            return httpx.Response(404, json={"error": {"code": "upload_not_found"}})

        gateway.chunk_faults = [vanish]
        async with make_client(gateway) as client:
            result = await upload_study(client, plan, options=UploadOptions(parallel=1))
        assert result.status is StudyStatus.VALIDATED
        assert len(gateway.uploads) == 1
        assert result.upload_id in gateway.uploads


class _Recorder(NullProgress):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def hashing(self, total_bytes: int) -> None:
        self.events.append(("hashing", total_bytes))

    def hashed(self, n_bytes: int) -> None:
        self.events.append(("hashed", n_bytes))


class TestRunUpload:
    async def test_files_hashed_while_discovered_are_counted_once_the_total_is_known(
        self, tmp_path: Path
    ) -> None:
        study = write_study(tmp_path / "in", instances=40, rows=64, columns=64)
        gateway = FakeGateway(chunk_size=CHUNK)
        progress = _Recorder()
        async with make_client(gateway) as client:
            summary = await run_upload(
                [tmp_path / "in"],
                client,
                options=UploadOptions(state_dir=tmp_path / "state"),
                progress=progress,
            )
        assert summary.exit_code == 0, summary.error
        total = sum(Path(p).stat().st_size for p in study.paths)
        assert progress.events[0] == ("hashing", total)
        assert sum(n for kind, n in progress.events if kind == "hashed") == total
        assert [kind for kind, _ in progress.events].count("hashing") == 1
        (upload,) = gateway.uploads.values()
        assert {f["sha256"] for f in upload.files} == {
            hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in study.paths
        }
