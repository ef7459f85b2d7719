"""What `relaypacs upload` says happened, on a folder of real-world files: the public test
files of pydicom, synthetic studies, and broken, hostile and unreadable files, against the
in-memory gateway.

Every study gets a number (in the progress and in the summary) whatever its fate; the totals
count what the gateway accepted; every skipped file is named, grouped by reason; modality and
date are read and shown the same way for every file."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from rich.console import Console

import relaypacs.client
from relaypacs.cli.display import PlainDisplay, RichDisplay
from relaypacs.cli.upload import upload
from relaypacs.client import (
    Discovery,
    GatewayClient,
    StudyPlan,
    StudyResult,
    StudyStatus,
)
from relaypacs.devtools import synth, unusual
from tests.cli.fakegateway import FakeGateway


def _pydicom_file(name: str, target: Path) -> Path:
    source = get_testdata_file(name)
    assert source is not None, name
    target.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, target / name))


def _instance_without_modality(
    path: Path, study_uid: str, *, nested_modality: str | None = None
) -> None:
    """A valid instance without its own Modality; with ``nested_modality``, a Modality in an
    item of a sequence (before the StudyInstanceUID) that describes another series."""
    ids = unusual.new_uids()
    ids["study_uid"] = study_uid
    data = synth.make_instance(**ids, rows=16, columns=16)
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.Modality
    if nested_modality is not None:
        item = Dataset()
        item.SeriesInstanceUID = generate_uid()
        item.Modality = nested_modality
        ds.ReferencedSeriesSequence = [item]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@dataclass
class Corpus:
    root: Path
    cd: synth.SynthStudy
    rejected: synth.SynthStudy
    rejected_name: str
    mixed_uid: str
    nested_uid: str
    bad_date_uid: str
    skipped: dict[str, set[str]]  # reason -> names


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    """Nine studies, in this order (the order of discovery: folders sorted by name):

    1. a_cd: a CD export (3 CT instances and a DICOMDIR): validated
    2. b_old/CT_small.dcm (pydicom): CT, 20040119: validated
    3. b_old/ExplVR_BigEnd.dcm (pydicom): US, an ACR-NEMA style date 1997.04.24: validated
    4. c_conflict: MR_small.dcm and MR_small_RLE.dcm (pydicom): the same SOP Instance UID with
       different bytes: both sent, both refused by the gateway (which judges copies once it
       has validated each): rejected
    5. d_mixed: a first file without Modality, then two CT and one SR in later series
    6. e_nested: a file whose only Modality is in a sequence item (another series')
    7. f_rejected: 2 CT instances, the second refused by the gateway's validation: accepted
       without it (partial)
    8. g_sc/GDCMJ2K_TextGBR.dcm (pydicom): secondary capture without Modality
    9. h_date: a study date that is not a date (20241301)

    and files that are not sent: a text file, a file with an undecodable name, a file with
    a terminal escape in its name, pydicom's JPEG-LS test file (DICOM without
    StudyInstanceUID), a synthetic one, a file cut before its StudyInstanceUID, a FIFO, a
    dangling link, a link to a folder, and the CD's DICOMDIR.
    """
    root = tmp_path / "in"
    cd = synth.write_study(root / "a_cd", instances=3, rows=16, columns=16, with_dicomdir=True)
    _pydicom_file("CT_small.dcm", root / "b_old")
    _pydicom_file("ExplVR_BigEnd.dcm", root / "b_old")
    _pydicom_file("MR_small.dcm", root / "c_conflict")
    _pydicom_file("MR_small_RLE.dcm", root / "c_conflict")

    mixed = generate_uid()
    _instance_without_modality(root / "d_mixed" / "IM1.dcm", mixed)
    for number, modality in ((2, "CT"), (3, "CT"), (4, "SR")):
        ids = unusual.new_uids()
        ids["study_uid"] = mixed
        synth.write_instance(
            root / "d_mixed" / f"IM{number}.dcm",
            **ids,
            rows=16,
            columns=16,
            modality=modality,
            series_number=number,
        )
    nested = generate_uid()
    _instance_without_modality(root / "e_nested" / "IM1.dcm", nested, nested_modality="MR")
    rejected = synth.write_study(root / "f_rejected", instances=2, rows=16, columns=16)
    _pydicom_file("GDCMJ2K_TextGBR.dcm", root / "g_sc")
    bad_date = synth.write_study(
        root / "h_date", instances=1, rows=16, columns=16, study_date="20241301"
    )

    junk = root / "junk"
    junk.mkdir()
    (junk / "README.TXT").write_text("Viewer instructions\n")
    os.close(os.open(os.fsencode(junk) + b"/caf\xe9.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    (junk / "\x1b[2Jclear.txt").write_text("hostile name")
    _pydicom_file("JPEGLSNearLossless_08.dcm", junk)
    (junk / "nostudy.dcm").write_bytes(unusual.make_missing_uid("StudyInstanceUID"))
    whole = synth.make_instance(**unusual.new_uids(), rows=16, columns=16)
    (junk / "cut.dcm").write_bytes(whole[:300])
    os.mkfifo(junk / "fifo.dcm")
    (junk / "dangling.dcm").symlink_to(tmp_path / "nowhere")
    (tmp_path / "elsewhere").mkdir()
    synth.write_study(tmp_path / "elsewhere", instances=1, rows=16, columns=16)
    (junk / "folder.dcm").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    return Corpus(
        root=root,
        cd=cd,
        rejected=rejected,
        rejected_name="f_rejected/IM000002.dcm",
        mixed_uid=mixed,
        nested_uid=nested,
        bad_date_uid=bad_date.study_uid,
        skipped={
            "not_dicom": {"junk/README.TXT", "junk/caf?.txt", "junk/?[2Jclear.txt"},
            "dicomdir": {"a_cd/DICOMDIR"},
            "no_study_uid": {"junk/JPEGLSNearLossless_08.dcm", "junk/nostudy.dcm"},
            "damaged": {"junk/cut.dcm"},
            "unreadable": {"junk/fifo.dcm", "junk/dangling.dcm"},
            "folder_link": {"junk/folder.dcm"},
        },
    )


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Run:
    """Run ``relaypacs upload`` (in this process) against a fake gateway."""
    monkeypatch.setenv("RELAYPACS_STATE_DIR", str(tmp_path / "state"))

    def run(gateway: FakeGateway, *args: str) -> tuple[int, str, str]:
        def client(*a: object, **kw: object) -> GatewayClient:
            return GatewayClient(*a, **kw, transport=gateway.transport())  # type: ignore[arg-type]

        monkeypatch.setattr(relaypacs.client, "GatewayClient", client)
        credentials = ["--server", "http://gateway.test", "--username", "u", "--password", "secret"]
        result = CliRunner().invoke(upload, [*args, *credentials])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result.exit_code, result.stdout, result.stderr

    return run


def _gateway(corpus: Corpus) -> FakeGateway:
    gateway = FakeGateway()
    gateway.reject_names[corpus.rejected_name] = "dicom_truncated"
    for name in ("c_conflict/MR_small.dcm", "c_conflict/MR_small_RLE.dcm"):
        gateway.reject_names[name] = "duplicate_sop_instance"
    return gateway


def _json_run(cli: Run, corpus: Corpus) -> dict[str, Any]:
    code, stdout, _ = cli(_gateway(corpus), str(corpus.root), "--json")
    summary: dict[str, Any] = json.loads(stdout)
    assert code == summary["exit_code"] == 1  # a rejected study (and a partial one)
    return summary


class TestJsonSummary:
    def test_every_study_is_numbered_in_order(self, cli: Run, corpus: Corpus) -> None:
        summary = _json_run(cli, corpus)
        studies = summary["studies"]
        assert [s["number"] for s in studies] == list(range(1, 10))
        assert [s["accepted"] for s in studies] == [s["status"] != "rejected" for s in studies]
        assert [s["status"] for s in studies] == [
            "validated",
            "validated",
            "validated",
            "rejected",
            "validated",
            "validated",
            "partial",
            "validated",
            "validated",
        ]

    def test_totals_count_what_was_sent_and_accepted(self, cli: Run, corpus: Corpus) -> None:
        summary = _json_run(cli, corpus)
        studies = summary["studies"]
        accepted = [s for s in studies if s["accepted"]]
        totals = summary["totals"]
        # 3 (CD) + 1 + 1 + 4 (mixed) + 1 + 1 (of the partial study's 2) + 1 + 1
        assert totals["files"] == totals["instances"] == 13
        assert totals["files"] == sum(s["files"] for s in accepted) - 1
        assert totals["total_bytes"] == sum(s["total_bytes"] for s in accepted)
        assert totals["studies"] == 9
        assert totals["studies_accepted"] == 8
        assert totals["studies_not_accepted"] == 1
        assert (totals["validated"], totals["partial"], totals["rejected"]) == (7, 1, 1)
        assert totals["files_found"] == 16
        assert totals["files_not_accepted"] == 2
        # The partial study's refused file, and the two differing copies of one instance.
        assert totals["files_refused"] == 3
        assert totals["files_refused_in_accepted"] == 1
        assert totals["files_skipped"] == sum(len(v) for v in corpus.skipped.values())
        # What went over the wire: every accepted byte (nothing was there before), and the
        # rejected study's.
        rejected, partial = studies[3], studies[6]
        assert totals["bytes_sent"] == totals["total_bytes"] + rejected["total_bytes"]
        assert (rejected["files"], rejected["instances"]) == (2, 0)
        assert sorted(e["code"] for e in rejected["errors"]) == ["duplicate_sop_instance"] * 2
        assert (partial["files"], partial["instances"]) == (2, 1)
        assert [(e["file"], e["code"]) for e in partial["errors"]] == [
            (corpus.rejected_name, "dicom_truncated")
        ]

    @pytest.mark.parametrize("strict", [False, True])
    def test_exit_code_for_a_partial_study_and_all_or_nothing(
        self, cli: Run, corpus: Corpus, tmp_path: Path, strict: bool
    ) -> None:
        gateway = FakeGateway()
        # Names are relative to the folder given.
        gateway.reject_names[corpus.rejected_name.removeprefix("f_rejected/")] = "dicom_truncated"
        args = ["--json", "--all-or-nothing"] if strict else ["--json"]
        code, stdout, _ = cli(gateway, str(corpus.root / "f_rejected"), *args)
        summary = json.loads(stdout)
        assert code == summary["exit_code"] == (1 if strict else 6)
        [study] = summary["studies"]
        assert study["status"] == ("rejected" if strict else "partial")
        assert study["instances"] == (0 if strict else 1)

    def test_every_skipped_file_is_named_with_its_reason(self, cli: Run, corpus: Corpus) -> None:
        summary = _json_run(cli, corpus)
        named = {reason: set(names) for reason, names in summary["skipped_files"].items()}
        assert named == corpus.skipped
        # The counts, as before.
        assert summary["skipped"] == {r: len(names) for r, names in corpus.skipped.items()}

    def test_modalities_from_each_files_own_modality(self, cli: Run, corpus: Corpus) -> None:
        by_uid = {s["study_instance_uid"]: s for s in _json_run(cli, corpus)["studies"]}
        studies = list(by_uid.values())
        assert [s["modalities"] for s in studies[:4]] == [["CT"], ["CT"], ["US"], ["MR"]]
        # The study's modalities, most frequent first: not only the first file's.
        assert by_uid[corpus.mixed_uid]["modalities"] == ["CT", "SR"]
        # A Modality inside a sequence item is another series': not this file's.
        assert by_uid[corpus.nested_uid]["modalities"] == []
        assert studies[7]["modalities"] == []  # no Modality in the file

    def test_dates_are_iso_old_dates_normalised(self, cli: Run, corpus: Corpus) -> None:
        studies = _json_run(cli, corpus)["studies"]
        assert [s["study_date"] for s in studies[:3]] == [
            "2024-01-02",
            "2004-01-19",
            "1997-04-24",  # 1997.04.24 in the file (ACR-NEMA)
        ]
        assert studies[8]["study_date"] == "20241301"  # not a date: as given


class TestHumanSummary:
    def test_progress_numbers_every_study(self, cli: Run, corpus: Corpus) -> None:
        code, _, stderr = cli(_gateway(corpus), str(corpus.root))
        assert code == 1
        for number in range(1, 10):
            assert f"Study {number}/9 " in stderr, stderr
        assert "Study 4/9 MR, 2 files: rejected" in stderr
        assert "Study 7/9 CT, 2 files: partial" in stderr

    def test_summary_says_what_happened_to_each_study(self, cli: Run, corpus: Corpus) -> None:
        _, stdout, _ = cli(_gateway(corpus), str(corpus.root))
        lines = stdout.splitlines()
        numbered = [line for line in lines if re.match(r"\s*\d+/9 ", line)]
        assert [int(line.split("/")[0]) for line in numbered] == list(range(1, 10))
        rejected, partial = numbered[3], numbered[6]
        assert "rejected" in rejected
        assert "2 refused" in rejected
        assert "instances" not in rejected
        assert "partial" in partial
        assert "accepted 1 of 2 files; 1 refused (listed below): 1 instance" in partial
        assert "8 of 9 studies accepted: 13 instances" in stdout
        assert "(1 file of them refused, listed above)" in stdout
        assert "1 study not accepted (1 rejected): 2 files, 2 refused" in stdout

    def test_modality_and_dates_shown_the_same_way(self, cli: Run, corpus: Corpus) -> None:
        _, stdout, stderr = cli(_gateway(corpus), str(corpus.root))
        assert "1997-04-24" in stdout
        assert "1997.04.24" not in stdout
        assert "2004-01-19" in stdout
        assert "20241301" in stdout
        assert " ? " not in stdout + stderr
        assert "?," not in stderr
        assert "CT/SR" in stdout
        assert "Study 5/9 CT/SR, 4 files" in stderr
        assert "Study 8/9 no modality, 1 file" in stderr

    def test_skipped_files_are_counted_and_named_by_reason(self, cli: Run, corpus: Corpus) -> None:
        _, stdout, _ = cli(_gateway(corpus), str(corpus.root))
        assert "Skipped 10 files: 3 not DICOM, 2 without StudyInstanceUID" in stdout
        assert "junk/JPEGLSNearLossless_08.dcm" in stdout
        assert "junk/cut.dcm" in stdout
        assert "junk/fifo.dcm" in stdout
        assert "a_cd/DICOMDIR" in stdout
        assert "\x1b" not in stdout  # a name is never a terminal escape

    def test_the_first_names_per_reason_and_all_with_verbose(
        self, cli: Run, corpus: Corpus, tmp_path: Path
    ) -> None:
        for number in range(6):
            (corpus.root / "junk" / f"notes{number}.txt").write_text("not an image")
        _, stdout, _ = cli(_gateway(corpus), str(corpus.root))
        listed = [f"junk/notes{n}.txt" for n in range(6) if f"junk/notes{n}.txt" in stdout]
        assert 0 < len(listed) < 6
        assert "more (-v lists them all)" in stdout
        _, verbose, _ = cli(_gateway(corpus), str(corpus.root), "-v")
        for number in range(6):
            assert f"junk/notes{number}.txt" in verbose


class TestProgressDisplays:
    """A study that fails before it starts (init refused, conflicting copies) still shows with
    its number on the terminal's progress display."""

    def _plans(self, tmp_path: Path) -> list[StudyPlan]:
        from relaypacs.client.manifest import StudyFile

        plans = []
        for number, modality in ((1, "CT"), (2, "MR")):
            path = tmp_path / f"f{number}"
            path.write_bytes(b"x")
            file = StudyFile(f"f{number}", path, 1, 0, "0" * 64, None)
            plans.append(
                StudyPlan(f"1.2.{number}", {}, [file], [modality], "20240102", number=number)
            )
        return plans

    def test_rich_display_shows_a_study_that_never_started(self, tmp_path: Path) -> None:
        out = io.StringIO()
        display = RichDisplay(Console(file=out, force_terminal=True, width=120))
        first, second = self._plans(tmp_path)
        display.discovered(Discovery(), [first, second])
        display.study_started(first, 1, 0)
        display.sent(1)
        display.study_finished(_result(first, StudyStatus.VALIDATED))
        display.study_finished(_result(second, StudyStatus.FAILED))
        display.close()
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
        assert "Study 1/2 CT, 1 file validated" in text
        assert "Study 2/2 MR, 1 file failed" in text

    def test_plain_display_names_the_study_by_number(self, tmp_path: Path) -> None:
        out = io.StringIO()
        display = PlainDisplay(out)
        first, second = self._plans(tmp_path)
        display.discovered(Discovery(), [first, second])
        display.study_finished(_result(second, StudyStatus.FAILED))
        assert "Study 2/2 MR, 1 file: failed" in out.getvalue()
        assert "1.2.2" not in out.getvalue()


def _result(plan: StudyPlan, status: StudyStatus) -> StudyResult:
    return StudyResult(
        study_instance_uid=plan.study_instance_uid,
        status=status,
        number=plan.number,
        files=len(plan.files),
        modalities=list(plan.modalities),
    )


def test_help_documents_every_json_key(cli: Run, corpus: Corpus) -> None:
    summary = _json_run(cli, corpus)
    help_text = CliRunner().invoke(upload, ["--help"]).stdout
    words = set(re.findall(r"[a-z_]+", help_text))
    keys = (
        set(summary)
        | set(summary["studies"][0])
        | set(summary["totals"]) - {status.value for status in StudyStatus}  # "per status"
        | set(summary["skipped_files"])
    )
    assert keys - words == set()


def test_names_the_terminal_cannot_show_do_not_end_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An ASCII terminal (LANG=C without UTF-8): the summary shows '?' for what it cannot."""
    monkeypatch.setenv("RELAYPACS_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "洪 café.txt").write_text("not an image")
    arguments = [str(tmp_path / "in"), "--server", "http://127.0.0.1:9"]
    result = CliRunner(charset="ascii").invoke(
        upload, [*arguments, "--username", "u", "--password", "p"]
    )
    assert result.exit_code == 2, result.output
    assert "not DICOM: ? caf?.txt" in result.stdout
