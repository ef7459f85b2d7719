"""`relaypacs demo-study DIR`: a study of a made-up patient for a newcomer to try uploads."""

from __future__ import annotations

from pathlib import Path

import pydicom
from click.testing import CliRunner

from relaypacs.cli.main import cli
from relaypacs.devtools.synth import DEFAULT_PATIENT


class TestDemoStudy:
    def test_writes_one_multi_series_study_of_a_fake_patient(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(
            cli, ["demo-study", str(tmp_path / "demo"), "--instances", "6", "--series", "2"]
        )
        assert result.exit_code == 0, result.output
        files = sorted(p for p in (tmp_path / "demo").rglob("*") if p.is_file())
        assert len(files) == 6
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        assert len({h.StudyInstanceUID for h in headers}) == 1
        assert len({h.SeriesInstanceUID for h in headers}) == 2
        assert {str(h.PatientName) for h in headers} == {DEFAULT_PATIENT.name}
        assert "6 instances in 2 series" in result.output

    def test_a_cd_export_has_its_dicomdir(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(
            cli, ["demo-study", str(tmp_path / "cd"), "--instances", "3", "--cd"]
        )
        assert result.exit_code == 0, result.output
        assert (tmp_path / "cd" / "DICOMDIR").is_file()
        assert "with a DICOMDIR" in result.output
