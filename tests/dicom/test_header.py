"""read_header and is_dicomdir: the client's view of a file."""

from __future__ import annotations

import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from relaypacs.devtools import synth, unusual
from relaypacs.dicom.header import StudyHeader, is_dicomdir, read_header


class TestReadHeader:
    def test_reads_the_study_fields(self, write: Callable[[bytes], Path]) -> None:
        ids = unusual.new_uids()
        data = synth.make_instance(
            **ids,
            rows=32,
            columns=32,
            patient_name="DOE^JANE",
            patient_id="P123",
            study_date="20260101",
            modality="MR",
            study_description="MR KNEE",
            accession_number="A42",
        )
        assert read_header(write(data)) == StudyHeader(
            study_instance_uid=ids["study_uid"],
            sop_instance_uid=ids["sop_uid"],
            patient_name="DOE^JANE",
            patient_id="P123",
            study_date="20260101",
            modality="MR",
            study_description="MR KNEE",
            accession_number="A42",
        )

    def test_decodes_the_character_set(self, write: Callable[[bytes], Path]) -> None:
        data = synth.make_instance(
            **unusual.new_uids(), rows=16, columns=16, patient_name="MÜLLER^JÜRGEN"
        )
        assert b"M\xdcLLER" in data  # ISO_IR 100 (latin-1) on disk
        header = read_header(write(data))
        assert header is not None
        assert header.patient_name == "MÜLLER^JÜRGEN"

    def test_empty_values_are_none(self, write: Callable[[bytes], Path]) -> None:
        data = synth.make_instance(**unusual.new_uids(), rows=16, columns=16, accession_number="")
        header = read_header(write(data))
        assert header is not None
        assert header.accession_number is None

    @pytest.mark.parametrize(
        "transfer_syntax",
        [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
    )
    def test_other_encodings(self, write: Callable[[bytes], Path], transfer_syntax: str) -> None:
        ids = unusual.new_uids()
        data = synth.make_instance(**ids, rows=16, columns=16, transfer_syntax=transfer_syntax)
        header = read_header(write(data))
        assert header is not None
        assert (header.study_instance_uid, header.patient_name) == (
            ids["study_uid"],
            synth.DEFAULT_PATIENT.name,
        )

    def test_file_without_preamble(self, write: Callable[[bytes], Path]) -> None:
        path = write(unusual.make_no_preamble())
        header = read_header(path)
        assert header is not None
        assert header.study_instance_uid == pydicom.dcmread(path, force=True).StudyInstanceUID

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"%PDF-1.7" * 100,
            b"PK\x03\x04" + bytes(500),
            bytes(128) + b"DICM",
            unusual.make_dicomdir_bytes(),
            unusual.make_missing_uid("StudyInstanceUID"),
            unusual.make_preamble_executable()[:400],  # cut before its StudyInstanceUID
        ],
        ids=["empty", "pdf", "zip", "meta-only", "dicomdir", "no-study-uid", "cut"],
    )
    def test_none_for_non_instances(self, write: Callable[[bytes], Path], data: bytes) -> None:
        assert read_header(write(data)) is None

    def test_none_for_unreadable_paths(self, tmp_path: Path) -> None:
        assert read_header(tmp_path / "missing.dcm") is None
        assert read_header(tmp_path) is None  # a directory

    def test_reads_only_the_header(self, tmp_path: Path, write: Callable[[bytes], Path]) -> None:
        """A 2 GB file, a cut pixel data, a deflate bomb and a 5000-deep nesting (after
        the study UID) all give their header, instantly and in bounded memory: the server
        is the one to reject them."""
        big = tmp_path / "big.dcm"
        ids = unusual.new_uids()
        size = synth.write_instance(big, **ids, frames=4000, sparse=True)
        whole = synth.make_instance(**unusual.new_uids(), rows=64, columns=64)
        paths = [
            big,
            write(whole[: len(whole) // 2]),
            write(unusual.make_deflate_bomb()),
            write(unusual.make_deep_nesting(5000)),
        ]
        assert size > 2_000_000_000
        tracemalloc.start()
        started = time.perf_counter()
        try:
            headers = [read_header(path) for path in paths]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.perf_counter() - started < 0.5
        assert peak < 4 << 20
        assert all(h is not None for h in headers)
        assert headers[0] is not None
        assert headers[0].sop_instance_uid == ids["sop_uid"]

    def test_fast(self, tmp_path: Path) -> None:
        study = synth.write_study(tmp_path, instances=50)
        started = time.process_time()
        headers = [read_header(path) for path in study.paths]
        assert (time.process_time() - started) / 50 < 0.005  # measured ~0.3 ms
        assert {h.study_instance_uid for h in headers if h is not None} == {study.study_uid}
        assert len([h for h in headers if h is not None]) == 50

    def test_agrees_with_pydicom_on_its_test_files(self) -> None:
        root = Path(pydicom.__file__).parent / "data"
        compared = 0
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            header = read_header(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                except Exception:
                    assert header is None, path
                    continue
            if "StudyInstanceUID" not in ds or "DirectoryRecordSequence" in ds:
                assert header is None, path
                continue
            assert header is not None, path
            assert header.study_instance_uid == ds.StudyInstanceUID
            assert header.patient_name == (str(ds.PatientName) if ds.get("PatientName") else None)
            assert header.patient_id == (ds.get("PatientID") or None)
            assert header.modality == (ds.get("Modality") or None)
            compared += 1
        assert compared >= 60


class TestIsDicomdir:
    def test_dicomdir(self, write: Callable[[bytes], Path]) -> None:
        assert is_dicomdir(write(unusual.make_dicomdir_bytes()))

    def test_dicomdir_of_a_cd_export(self, tmp_path: Path) -> None:
        study = synth.write_study(tmp_path, instances=3, rows=16, columns=16, with_dicomdir=True)
        assert study.dicomdir is not None
        assert is_dicomdir(study.dicomdir)
        assert not any(is_dicomdir(path) for path in study.paths)

    def test_directory_records_without_dicomdir_meta(self, write: Callable[[bytes], Path]) -> None:
        data = unusual.make_dicomdir_bytes()
        patched = data.replace(b"1.2.840.10008.1.3.10", b"1.2.840.10008.1.3.11", 1)
        assert is_dicomdir(write(patched))

    def test_dicomdir_with_broken_records(self, write: Callable[[bytes], Path]) -> None:
        data = unusual.make_dicomdir_bytes()
        assert is_dicomdir(write(data[: len(data) - 10]))

    @pytest.mark.parametrize(
        "data", [b"", b"hello" * 100, unusual.make_no_preamble(), unusual.make_tiff_preamble()]
    )
    def test_not_dicomdir(self, write: Callable[[bytes], Path], data: bytes) -> None:
        assert not is_dicomdir(write(data))

    def test_missing_file(self, tmp_path: Path) -> None:
        assert not is_dicomdir(tmp_path / "DICOMDIR")
