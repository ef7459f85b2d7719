"""``relaypacs upload`` without a server: options, help, input errors; run_upload re-runs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaypacs.cli.upload import upload
from relaypacs.client import (
    GatewayClient,
    InputError,
    RetryPolicy,
    RunSummary,
    StudyStatus,
    UploadOptions,
    run_upload,
)
from relaypacs.devtools.synth import DEFAULT_PATIENT, write_study
from tests.cli.fakegateway import FakeGateway


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("RELAYPACS_STATE_DIR", str(tmp_path / "state"))
    return CliRunner()


def _credentials() -> list[str]:
    # Port 9 (discard): nothing listens, so a run that gets that far exits 3.
    return ["--server", "http://127.0.0.1:9", "--username", "u", "--password", "p"]


class TestCommandLine:
    def test_help_documents_exit_codes(self, runner: CliRunner) -> None:
        result = runner.invoke(upload, ["--help"])
        assert result.exit_code == 0
        for line in ("0  every study validated", "1  some study rejected", "2  usage error"):
            assert line in result.stdout
        assert "3  could not reach the server" in result.stdout
        assert "4  authentication failed" in result.stdout

    def test_missing_password_without_a_terminal_is_a_usage_error(
        self, runner: CliRunner, tmp_path: Path
    ) -> None:
        result = runner.invoke(upload, [str(tmp_path), "--username", "u"])
        assert result.exit_code == 2
        assert "--password" in result.stderr

    def test_missing_path_is_a_usage_error(self, runner: CliRunner, tmp_path: Path) -> None:
        result = runner.invoke(upload, [str(tmp_path / "nope"), *_credentials()])
        assert result.exit_code == 2

    def test_nothing_to_upload_exits_2_with_a_json_summary(
        self, runner: CliRunner, tmp_path: Path
    ) -> None:
        (tmp_path / "notes.txt").write_text("no images")
        result = runner.invoke(upload, [str(tmp_path), "--json", *_credentials()])
        assert result.exit_code == 2
        summary = json.loads(result.stdout)
        assert summary["exit_code"] == 2
        assert summary["skipped"] == {"not_dicom": 1}
        assert summary["studies"] == []

    def test_unsafe_zip_exits_2_before_contacting_the_server(
        self, runner: CliRunner, tmp_path: Path
    ) -> None:
        write_study(tmp_path / "s", instances=1, rows=16, columns=16)
        with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
            zf.writestr("../evil", b"x")
        args = [str(tmp_path / "s"), str(tmp_path / "evil.zip"), "--json", *_credentials()]
        result = runner.invoke(upload, args)
        assert result.exit_code == 2
        assert "zip-slip" in json.loads(result.stdout)["error"]

    def test_unreachable_server_exits_3_and_says_how_to_resume(
        self, runner: CliRunner, tmp_path: Path
    ) -> None:
        write_study(tmp_path / "s", instances=1, rows=16, columns=16)
        result = runner.invoke(upload, [str(tmp_path / "s"), "--retries", "0", *_credentials()])
        assert result.exit_code == 3
        assert "run the same command again" in result.stdout.lower()
        assert DEFAULT_PATIENT.name not in result.output  # no patient name in the human summary


class TestRunUpload:
    async def test_rerun_hits_the_hash_cache_and_sends_nothing(self, tmp_path: Path) -> None:
        study = write_study(tmp_path / "cd", instances=5, rows=32, columns=32, with_dicomdir=True)
        archive = tmp_path / "cd.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for path in study.paths:
                zf.write(path, Path(path).relative_to(tmp_path / "cd").as_posix())
        other = write_study(tmp_path / "other", instances=2, rows=32, columns=32)
        gateway = FakeGateway(chunk_size=4096)
        options = UploadOptions(state_dir=tmp_path / "state", parallel=3)
        paths = [archive, tmp_path / "other"]
        summaries: list[RunSummary] = []

        async def run() -> dict[str, StudyStatus]:
            client = GatewayClient(
                "http://gateway.test",
                username="alice",
                password="secret",
                retry=RetryPolicy(retries=1),
                transport=gateway.transport(),
            )
            async with client:
                summary = await run_upload(paths, client, options=options)
            assert summary.exit_code == 0, summary.as_dict()
            summaries.append(summary)
            return {s.study_instance_uid: s.status for s in summary.studies}

        first = await run()
        assert first == {
            study.study_uid: StudyStatus.VALIDATED,
            other.study_uid: StudyStatus.VALIDATED,
        }
        assert summaries[-1].hash_cache_hits == 0
        puts = len(gateway.chunk_puts)
        second = await run()
        assert set(second.values()) == {StudyStatus.ALREADY_DELIVERED}
        assert summaries[-1].hash_cache_hits == 7  # 5 archive members + 2 files
        assert len(gateway.chunk_puts) == puts
        # The extraction directory does not outlive the run.
        assert not any((tmp_path / "state" / "extract").iterdir())

    async def test_nothing_is_sent_for_refused_or_empty_input(self, tmp_path: Path) -> None:
        """The login runs while files are hashed, never before the input is known good."""
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no images")
        write_study(tmp_path / "s", instances=1, rows=16, columns=16)
        with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
            zf.writestr("../evil", b"x")
        gateway = FakeGateway()
        options = UploadOptions(state_dir=tmp_path / "state")
        transport = gateway.transport()
        client = GatewayClient(
            "http://gateway.test", username="alice", password="secret", transport=transport
        )
        async with client:
            summary = await run_upload([tmp_path / "empty"], client, options=options)
            assert summary.exit_code == 2
            with pytest.raises(InputError, match="zip-slip"):
                await run_upload([tmp_path / "s", tmp_path / "evil.zip"], client, options=options)
            assert gateway.logins == 0
            summary = await run_upload([tmp_path / "s"], client, options=options)
        assert summary.exit_code == 0
        assert gateway.logins == 1
