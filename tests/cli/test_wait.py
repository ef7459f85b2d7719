"""--wait: following accepted studies until the PACS has them, against the in-memory gateway."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import relaypacs.client
from relaypacs.cli.upload import upload
from relaypacs.client import (
    DeliveryStatus,
    ExitCode,
    GatewayClient,
    NullProgress,
    RunSummary,
    StudyResult,
    StudyStatus,
    UploadOptions,
    describe_forward_error,
    upload_study,
    wait_for_delivery,
)
from relaypacs.devtools.synth import DEFAULT_PATIENT, write_study
from tests.cli.fakegateway import FakeGateway, FakePacs
from tests.cli.test_engine import CHUNK, make_client, make_plan


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Recorder(NullProgress):
    def __init__(self) -> None:
        self.waiting_for: list[str] = []
        self.seen: list[tuple[str, int, int]] = []
        self.finished: list[str] = []

    def waiting(self, results: object) -> None:
        assert isinstance(results, list)
        self.waiting_for = [r.study_instance_uid for r in results]

    def delivery_progress(self, result: StudyResult) -> None:
        assert result.delivery is not None
        d = result.delivery
        self.seen.append((d.upload_status, d.confirmed, d.instances))

    def delivery_finished(self, result: StudyResult) -> None:
        assert result.delivery is not None
        self.finished.append(result.delivery.status.value)


async def _upload_and_wait(
    gateway: FakeGateway,
    tmp_path: Path,
    *,
    files: int = 5,
    timeout: float = 3600.0,
    retries: int = 8,
    before_wait: Callable[[], None] | None = None,
    fake_time: FakeTime | None = None,
) -> tuple[StudyResult, FakeTime, Recorder]:
    plan = make_plan(tmp_path, [1000 + i for i in range(files)])
    fake_time, progress = fake_time or FakeTime(), Recorder()
    options = UploadOptions(wait=True, wait_timeout=timeout)
    async with make_client(gateway, retries=retries) as client:
        result = await upload_study(client, plan)
        assert result.status is StudyStatus.VALIDATED
        if before_wait is not None:
            before_wait()
        await wait_for_delivery(
            client,
            [result],
            options=options,
            progress=progress,
            sleep=fake_time.sleep,
            clock=fake_time.clock,
        )
    return result, fake_time, progress


class TestWaitForDelivery:
    async def test_follows_the_study_until_the_pacs_has_every_instance(
        self, tmp_path: Path
    ) -> None:
        gateway = FakeGateway(chunk_size=CHUNK, pacs=FakePacs(per_step=2))
        result, fake_time, progress = await _upload_and_wait(gateway, tmp_path)
        delivery = result.delivery
        assert delivery is not None
        assert delivery.status is DeliveryStatus.DELIVERED
        assert (delivery.confirmed, delivery.instances, delivery.failed) == (5, 5, 0)
        assert delivery.target == "pacs"
        assert progress.waiting_for == [result.study_instance_uid]
        assert progress.seen == [("queued", 0, 5), ("forwarding", 2, 5), ("forwarding", 4, 5)]
        assert progress.finished == ["delivered"]
        # It moved at every poll: polled every second.
        assert fake_time.sleeps == [1.0, 1.0, 1.0]
        summary = RunSummary(studies=[result])
        assert summary.exit_code == ExitCode.OK
        [study] = summary.as_dict()["studies"]
        assert study["delivery"]["status"] == "delivered"
        assert study["delivery"]["confirmed"] == 5
        assert study["delivery"]["instances"] == 5
        assert study["delivery"]["target"] == "pacs"

    async def test_backs_off_while_nothing_moves_then_times_out(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK, pacs=FakePacs(down=True))
        result, fake_time, progress = await _upload_and_wait(gateway, tmp_path, timeout=30)
        delivery = result.delivery
        assert delivery is not None
        assert delivery.status is DeliveryStatus.TIMED_OUT
        assert delivery.last_error == "http_503"
        assert "goes on forwarding" in (delivery.message or "")
        assert fake_time.sleeps[:6] == [1.0, 1.5, 2.25, 3.375, 5.0, 5.0]
        assert max(fake_time.sleeps) == 5.0
        assert fake_time.now == pytest.approx(30.0)
        assert progress.finished == ["timed_out"]
        summary = RunSummary(studies=[result])
        assert summary.exit_code == ExitCode.UNREACHABLE
        assert summary.wait_unfinished

    async def test_slow_answers_are_asked_for_less_often(self, tmp_path: Path) -> None:
        """A poll of a study of thousands of files costs the gateway: at most 1/20 of the
        time goes to answering them."""
        gateway = FakeGateway(chunk_size=CHUNK, pacs=FakePacs(per_step=2))
        fake_time = FakeTime()

        def slow() -> None:
            fake_time.now += 0.25

        gateway.on_upload_get = slow
        result, _, _ = await _upload_and_wait(gateway, tmp_path, fake_time=fake_time)
        assert result.delivery is not None
        assert result.delivery.status is DeliveryStatus.DELIVERED
        assert fake_time.sleeps == [5.0, 5.0, 5.0]

    async def test_refused_instances_are_listed_with_file_name_and_reason(
        self, tmp_path: Path
    ) -> None:
        pacs = FakePacs(per_step=10, refuse={1: "A900", 3: "0122"})
        gateway = FakeGateway(chunk_size=CHUNK, pacs=pacs)
        result, _, _ = await _upload_and_wait(gateway, tmp_path)
        delivery = result.delivery
        assert delivery is not None
        assert delivery.status is DeliveryStatus.FAILED
        assert (delivery.confirmed, delivery.failed, delivery.instances) == (3, 2, 5)
        assert [(p.name, p.code, p.message) for p in delivery.failures] == [
            ("DICOM/IM0001", "A900", "data set does not match SOP class"),
            ("DICOM/IM0003", "0122", "SOP class not supported"),
        ]
        assert RunSummary(studies=[result]).exit_code == ExitCode.NOT_DELIVERED
        # A study rejected by the gateway's validation says more: 1 wins over 5.
        rejected = StudyResult(study_instance_uid="9.9", status=StudyStatus.REJECTED)
        assert RunSummary(studies=[result, rejected]).exit_code == ExitCode.REJECTED

    async def test_the_gateways_own_refusals_are_split_into_code_and_meaning(
        self, tmp_path: Path
    ) -> None:
        mismatch = "content_mismatch: the PACS holds other bytes under this SOP Instance UID"
        pacs = FakePacs(per_step=10, refuse={2: mismatch})
        gateway = FakeGateway(chunk_size=CHUNK, pacs=pacs)
        result, _, _ = await _upload_and_wait(gateway, tmp_path)
        assert result.delivery is not None
        assert [(p.name, p.code, p.message) for p in result.delivery.failures] == [
            ("DICOM/IM0002", "content_mismatch", mismatch.partition(": ")[2])
        ]

    async def test_a_partly_accepted_study_is_followed(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK, pacs=FakePacs(per_step=10, queued_steps=0))
        plan = make_plan(tmp_path, [1000, 2000])
        async with make_client(gateway) as client:
            result = await upload_study(client, plan)
            result.status = StudyStatus.PARTIAL  # as when the gateway refused some other file
            await wait_for_delivery(
                client, [result], options=UploadOptions(wait=True), sleep=FakeTime().sleep
            )
        assert result.delivery is not None
        assert result.delivery.status is DeliveryStatus.DELIVERED
        assert RunSummary(studies=[result]).exit_code == ExitCode.PARTIAL

    async def test_without_a_pacs_it_says_so_at_once(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK)
        result, fake_time, _ = await _upload_and_wait(gateway, tmp_path)
        assert result.delivery is not None
        assert result.delivery.status is DeliveryStatus.NO_PACS
        assert fake_time.sleeps == []
        assert RunSummary(studies=[result]).exit_code == ExitCode.OK

    async def test_an_already_delivered_study_is_followed_too(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK, pacs=FakePacs(per_step=3))
        plan = make_plan(tmp_path, [1000, 2000, 3000, 4000])
        fake_time = FakeTime()
        options = UploadOptions(wait=True)
        async with make_client(gateway) as client:
            first = await upload_study(client, plan)  # not followed: still queued
            again = await upload_study(client, plan)
            assert again.status is StudyStatus.ALREADY_DELIVERED
            assert again.upload_id == first.upload_id
            await wait_for_delivery(
                client, [again], options=options, sleep=fake_time.sleep, clock=fake_time.clock
            )
            assert again.delivery is not None
            assert again.delivery.status is DeliveryStatus.DELIVERED
            assert again.delivery.confirmed == 4
            # Once delivered, following it again takes one look.
            gets = gateway.upload_gets
            third = await upload_study(client, plan)
            await wait_for_delivery(client, [third], options=options, sleep=fake_time.sleep)
        assert third.delivery is not None
        assert third.delivery.status is DeliveryStatus.DELIVERED
        assert gateway.upload_gets == gets + 1

    async def test_an_unreachable_gateway_stops_the_wait_with_what_is_known(
        self, tmp_path: Path
    ) -> None:
        gateway = FakeGateway(chunk_size=CHUNK, pacs=FakePacs(per_step=1, queued_steps=0))

        def cut() -> None:
            gateway.get_faults = [
                lambda: httpx.Response(200, json=next(iter(gateway.uploads.values())).read()),
                *[lambda: httpx.ConnectError("gateway down")] * 3,
            ]

        result, _, progress = await _upload_and_wait(gateway, tmp_path, retries=2, before_wait=cut)
        delivery = result.delivery
        assert delivery is not None
        assert delivery.status is DeliveryStatus.UNREACHABLE
        assert delivery.upload_status == "queued"  # the last answer it had
        assert "gave up after 2 retries" in (delivery.message or "")
        assert progress.finished == ["unreachable"]
        assert RunSummary(studies=[result]).exit_code == ExitCode.UNREACHABLE

    async def test_an_upload_gone_from_the_gateway_is_not_delivered(self, tmp_path: Path) -> None:
        gateway = FakeGateway(chunk_size=CHUNK, pacs=FakePacs())

        def remove() -> None:
            gateway.uploads.clear()

        result, _, _ = await _upload_and_wait(gateway, tmp_path, before_wait=remove)
        assert result.delivery is not None
        assert result.delivery.status is DeliveryStatus.CANCELLED
        assert RunSummary(studies=[result]).exit_code == ExitCode.NOT_DELIVERED

    async def test_only_accepted_studies_are_followed(self) -> None:
        gateway = FakeGateway()
        rejected = StudyResult("1.2", StudyStatus.REJECTED, upload_id="x")
        not_started = StudyResult("1.3", StudyStatus.NOT_STARTED)
        progress = Recorder()
        async with make_client(gateway) as client:
            await wait_for_delivery(client, [rejected, not_started], progress=progress)
        assert rejected.delivery is None
        assert not_started.delivery is None
        assert progress.waiting_for == []
        assert gateway.upload_gets == 0


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        ("A700", "out of resources"),
        ("a7ff", "out of resources"),
        ("A900", "data set does not match SOP class"),
        ("C122", "transfer syntax not supported"),
        ("C001", "cannot understand"),
        ("0110", "processing failure"),
        ("http_409", "the PACS answered HTTP 409"),
        ("timeout", "the PACS did not answer in time"),
        ("not_listed_by_qido", "sent, but the PACS does not list it"),
        ("weird", "refused by the PACS"),
        (None, "refused by the PACS"),
    ],
)
def test_forward_errors_are_explained(code: str | None, meaning: str) -> None:
    assert describe_forward_error(code) == meaning


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[FakeGateway, list[str]], tuple[int, str, str]]:
    """Run ``relaypacs upload`` (in this process) against a fake gateway."""
    monkeypatch.setenv("RELAYPACS_STATE_DIR", str(tmp_path / "state"))
    study = tmp_path / "study"
    write_study(study, instances=3, rows=16, columns=16)

    def run(gateway: FakeGateway, args: list[str]) -> tuple[int, str, str]:
        def client(*a: object, **kw: object) -> GatewayClient:
            return GatewayClient(*a, **kw, transport=gateway.transport())  # type: ignore[arg-type]

        monkeypatch.setattr(relaypacs.client, "GatewayClient", client)
        credentials = ["--server", "http://gateway.test", "--username", "u", "--password", "secret"]
        result = CliRunner().invoke(upload, [str(study), *credentials, *args])
        return result.exit_code, result.stdout, result.stderr

    return run


class TestCommandLine:
    def test_json_summary_has_the_delivery(
        self, cli: Callable[[FakeGateway, list[str]], tuple[int, str, str]]
    ) -> None:
        gateway = FakeGateway(pacs=FakePacs(per_step=10, queued_steps=0))
        code, stdout, _ = cli(gateway, ["--wait", "--json"])
        assert code == 0, stdout
        summary = json.loads(stdout)
        [study] = summary["studies"]
        assert study["status"] == "validated"
        delivery = study["delivery"]
        keys = ("status", "target", "confirmed", "failed", "instances")
        assert {k: delivery[k] for k in keys} == {
            "status": "delivered",
            "target": "pacs",
            "confirmed": 3,
            "failed": 0,
            "instances": 3,
        }
        assert "wait_seconds" in summary["timings"]
        totals = summary["totals"]
        assert (totals["pacs_confirmed"], totals["pacs_refused"]) == (3, 0)

    def test_without_wait_there_is_no_delivery(
        self, cli: Callable[[FakeGateway, list[str]], tuple[int, str, str]]
    ) -> None:
        gateway = FakeGateway(pacs=FakePacs())
        code, stdout, _ = cli(gateway, ["--json"])
        assert code == 0
        assert json.loads(stdout)["studies"][0]["delivery"] is None
        assert gateway.upload_gets == 0

    def test_refused_instances_exit_5_with_names_and_reasons(
        self, cli: Callable[[FakeGateway, list[str]], tuple[int, str, str]]
    ) -> None:
        gateway = FakeGateway(pacs=FakePacs(per_step=10, queued_steps=0, refuse={2: "A900"}))
        code, stdout, stderr = cli(gateway, ["--wait"])
        assert code == ExitCode.NOT_DELIVERED == 5
        assert "waiting for the PACS to confirm 1 study" in stderr
        assert "PACS confirmed 2/3, not delivered: the PACS refused 1 instance" in stdout
        assert "IM000003.dcm: A900 (data set does not match SOP class)" in stdout
        assert "PACS: 2 of 3 instances confirmed, 1 refused" in stdout
        assert DEFAULT_PATIENT.name not in stdout + stderr

    def test_delivered_says_pacs_confirmed(
        self, cli: Callable[[FakeGateway, list[str]], tuple[int, str, str]]
    ) -> None:
        gateway = FakeGateway(pacs=FakePacs(per_step=10, queued_steps=0))
        code, stdout, stderr = cli(gateway, ["--wait"])
        assert code == 0, stdout
        assert "PACS confirmed 3/3, delivered to pacs" in stdout
        assert "PACS: 3 of 3 instances confirmed\n" in stdout
        assert "Study 1/1 CT, 3 files: PACS confirmed 3/3, delivered to pacs" in stderr

    def test_wait_timeout_alone_implies_wait_and_exits_3(
        self, cli: Callable[[FakeGateway, list[str]], tuple[int, str, str]]
    ) -> None:
        gateway = FakeGateway(pacs=FakePacs(down=True))
        code, stdout, _ = cli(gateway, ["--wait-timeout", "0"])
        assert code == ExitCode.UNREACHABLE
        assert "stopped waiting (--wait-timeout)" in stdout
        assert "PACS: 0 of 3 instances confirmed, 3 not yet" in stdout
        assert "goes on forwarding them: run the same command again" in stdout

    def test_no_pacs_configured_is_said(
        self, cli: Callable[[FakeGateway, list[str]], tuple[int, str, str]]
    ) -> None:
        code, stdout, _ = cli(FakeGateway(), ["--wait"])
        assert code == 0
        assert "the gateway has no PACS configured" in stdout
        assert "PACS: none configured on the gateway" in stdout

    def test_help_documents_exit_code_5(self) -> None:
        result = CliRunner().invoke(upload, ["--help"])
        assert "5  with --wait: the PACS refused some instance" in result.stdout
        assert "--wait-timeout SECONDS" in result.stdout
        assert "the first of 4, 3, 1, 5, 6 wins" in result.stdout
        assert "6  some study was accepted without some of its files" in result.stdout
