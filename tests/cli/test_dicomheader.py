"""relaypacs.client.dicomheader: the same answers as relaypacs.dicom.header, without pydicom."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from relaypacs.client import dicomheader
from relaypacs.devtools import synth, unusual
from relaypacs.dicom import header as reference
from tests.gateway import subprocess_env

Write = Callable[[bytes], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    counter = iter(range(1_000_000))

    def _write(data: bytes) -> Path:
        path = tmp_path / f"f{next(counter)}"
        path.write_bytes(data)
        return path

    return _write


@pytest.fixture
def no_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the reader falls back to pydicom."""

    def fail(path: Path) -> None:
        raise AssertionError(f"fell back to pydicom for {path}")

    monkeypatch.setattr(dicomheader, "_with_pydicom", fail)


def _same(path: Path) -> dicomheader.StudyHeader | None:
    """The client's header of ``path``, after checking it is the reference's."""
    ours = dicomheader.read_header(path)
    theirs = reference.read_header(path)
    assert (None if ours is None else dataclasses.asdict(ours)) == (
        None if theirs is None else dataclasses.asdict(theirs)
    ), path
    return ours


def _instance(transfer_syntax: str = ExplicitVRLittleEndian, **elements: object) -> bytes:
    """A small instance with the given elements (keyword -> value, or None to leave out)."""
    return _build(elements, transfer_syntax)


def _build(elements: Mapping[str, object], transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    uids = unusual.new_uids()
    ds = Dataset()
    ds.SOPClassUID = synth.CT_IMAGE_STORAGE
    ds.SOPInstanceUID = uids["sop_uid"]
    ds.StudyDate = "20260101"
    ds.Modality = "CT"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = uids["study_uid"]
    ds.SeriesInstanceUID = uids["series_uid"]
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _raw_value(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with one explicit VR LE short value replaced (its length fixed)."""
    assert len(old) % 2 == 0
    assert len(new) % 2 == 0
    at = data.index(old)
    length = int.from_bytes(data[at - 2 : at], "little")
    assert length == len(old)
    return data[: at - 2] + len(new).to_bytes(2, "little") + new + data[at + len(old) :]


class TestSameAnswersAsPydicom:
    def test_synthetic_instances_without_pydicom(self, write: Write, no_pydicom: None) -> None:
        for transfer_syntax in (
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
            ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian,
        ):
            ids = unusual.new_uids()
            data = synth.make_instance(
                **ids,
                rows=16,
                columns=16,
                transfer_syntax=transfer_syntax,
                patient_name="MÜLLER^JÜRGEN",  # ISO_IR 100
                accession_number="",
                study_description="CT THORAX ",
            )
            header = _same(write(data))
            assert header is not None
            assert header.patient_name == "MÜLLER^JÜRGEN"
            assert header.accession_number is None
            assert header.study_description == "CT THORAX"
            assert header.sop_instance_uid == ids["sop_uid"]
        assert _same(write(unusual.make_no_preamble())) is not None
        assert _same(write(unusual.make_tiff_preamble())) is not None
        assert _same(write(unusual.make_preamble_executable())) is not None

    def test_utf8_and_default_character_sets_without_pydicom(
        self, write: Write, no_pydicom: None
    ) -> None:
        utf8 = _same(
            write(
                _instance(
                    SpecificCharacterSet="ISO_IR 192",
                    PatientName="Wang^XiaoDong 王",
                    StudyDescription="Ж",
                )
            )
        )
        assert utf8 is not None
        assert (utf8.patient_name, utf8.study_description) == ("Wang^XiaoDong 王", "Ж")
        plain = _same(write(_instance(SpecificCharacterSet=None, AccessionNumber=" A1 ")))
        assert plain is not None
        assert plain.accession_number == "A1"

    def test_a_sequence_before_the_study_uid(self, write: Write, no_pydicom: None) -> None:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.3"
        item.ReferencedSOPInstanceUID = "1.2.3.4"
        for transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            data = _instance(transfer_syntax, ReferencedStudySequence=Sequence([item]))
            header = _same(write(data))
            assert header is not None
            assert header.patient_id == "P1"

    @pytest.mark.parametrize(
        "elements",
        [
            {"SpecificCharacterSet": "ISO_IR 144", "PatientName": "\u0418\u0432\u0430\u043d"},
            {"SpecificCharacterSet": ["", "ISO 2022 IR 87"], "PatientName": "Yamada^Tarou"},
            {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Hong^Gildong=洪^吉洞="},
            {"StudyDescription": ["CT", "HEAD"]},
            {"Modality": ["CT", "PT"]},
            {"StudyDescription": "X" * 2000},
        ],
        ids=["cyrillic", "iso-2022", "pn-groups", "multi-lo", "multi-cs", "long"],
    )
    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_what_pydicom_decodes(self, write: Write, elements: dict[str, object]) -> None:
        assert _same(write(_build(elements))) is not None

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_bytes_that_do_not_decode(self, write: Write) -> None:
        data = _instance(SpecificCharacterSet="ISO_IR 192", PatientName="ABCD")
        _same(write(_raw_value(data, b"ABCD", b"AB\xff\xfe")))
        # A non-ASCII byte in a UID or a code string
        data = _instance(Modality="CT")
        _same(write(_raw_value(data, b"CT", b"C\xc9")))

    def test_not_instances(self, write: Write, tmp_path: Path) -> None:
        for data in (
            b"",
            b"%PDF-1.7" * 100,
            b"PK\x03\x04" + bytes(500),
            bytes(128) + b"DICM",
            unusual.make_dicomdir_bytes(),
            unusual.make_missing_uid("StudyInstanceUID"),
            unusual.make_preamble_executable()[:400],
        ):
            assert _same(write(data)) is None
        assert _same(tmp_path / "missing.dcm") is None
        assert _same(tmp_path) is None

    def test_pydicom_test_files(self) -> None:
        root = Path(pydicom.__file__).parent / "data"
        found = 0
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            found += _same(path) is not None
        assert found >= 60


class TestIsDicomdir:
    def test_same_answers(self, write: Write, tmp_path: Path) -> None:
        study = synth.write_study(
            tmp_path / "cd", instances=2, rows=16, columns=16, with_dicomdir=True
        )
        assert study.dicomdir is not None
        data = unusual.make_dicomdir_bytes()
        paths = [
            study.dicomdir,
            *study.paths,
            write(data),
            write(data[: len(data) - 10]),
            write(data.replace(b"1.2.840.10008.1.3.10", b"1.2.840.10008.1.3.11", 1)),
            write(b"hello" * 100),
            write(unusual.make_no_preamble()),
            tmp_path / "DICOMDIR",
        ]
        answers = [dicomheader.is_dicomdir(path) for path in paths]
        assert answers == [reference.is_dicomdir(path) for path in paths]
        assert answers[:3] == [True, False, False]


def test_a_study_is_read_without_importing_pydicom(tmp_path: Path) -> None:
    study = synth.write_study(tmp_path / "s", instances=3, rows=16, columns=16)
    code = (
        "import asyncio, sys, tempfile\n"
        "from pathlib import Path\n"
        "from relaypacs.client.discovery import discover\n"
        "with tempfile.TemporaryDirectory() as ws:\n"
        f"    found = asyncio.run(discover([Path({str(tmp_path / 's')!r})], workspace=Path(ws)))\n"
        "assert len(found.files) == 3, found\n"
        "print(sorted(m for m in ('pydicom', 'numpy') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(study.paths) == 3
