"""The synthetic-study generator makes what it says, fast, and readable by pydicom."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.fileset import FileSet
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from relaypacs.devtools import synth, unusual


def read(data: bytes, *, force: bool = False) -> pydicom.FileDataset:
    return pydicom.dcmread(io.BytesIO(data), force=force)


class TestMakeInstance:
    def test_is_a_valid_part10_ct_image(self) -> None:
        ids = unusual.new_uids()
        data = synth.make_instance(**ids, instance_number=7)
        assert data[:128] == bytes(128)
        assert data[128:132] == b"DICM"
        ds = read(data)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ids["sop_uid"]
        assert ds.SOPClassUID == synth.CT_IMAGE_STORAGE
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
            ids["study_uid"],
            ids["series_uid"],
            ids["sop_uid"],
        )
        assert (ds.Modality, ds.InstanceNumber) == ("CT", 7)
        assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate) == (
            synth.DEFAULT_PATIENT.name,
            synth.DEFAULT_PATIENT.patient_id,
            synth.DEFAULT_PATIENT.birth_date,
        )
        pixels = ds.pixel_array
        assert pixels.shape == (512, 512)
        assert pixels.dtype == np.uint16
        assert pixels.max() < 4096
        assert len(np.unique(pixels)) > 1000  # noise, not a constant

    def test_fake_phi_can_be_chosen(self) -> None:
        data = synth.make_instance(
            **unusual.new_uids(),
            rows=8,
            columns=8,
            patient_name="DOE^JANE",
            patient_id="X9",
            birth_date="19450203",
        )
        ds = read(data)
        assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate) == ("DOE^JANE", "X9", "19450203")

    def test_pixels_are_deterministic_per_seed(self) -> None:
        ids = unusual.new_uids()
        one = read(synth.make_instance(**ids, rows=32, columns=32, seed=1)).pixel_array
        again = read(synth.make_instance(**ids, rows=32, columns=32, seed=1)).pixel_array
        other = read(synth.make_instance(**ids, rows=32, columns=32, seed=2)).pixel_array
        assert np.array_equal(one, again)
        assert not np.array_equal(one, other)

    def test_multiframe(self) -> None:
        ds = read(synth.make_instance(**unusual.new_uids(), rows=16, columns=24, frames=5))
        assert ds.SOPClassUID == synth.MULTIFRAME_SC_STORAGE
        assert ds.NumberOfFrames == 5
        assert ds.pixel_array.shape == (5, 16, 24)

    @pytest.mark.parametrize(
        "transfer_syntax",
        [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
    )
    def test_native_transfer_syntaxes(self, transfer_syntax: str) -> None:
        ids = unusual.new_uids()
        reference = read(synth.make_instance(**ids, rows=16, columns=16, seed=3)).pixel_array
        ds = read(
            synth.make_instance(**ids, rows=16, columns=16, seed=3, transfer_syntax=transfer_syntax)
        )
        assert ds.file_meta.TransferSyntaxUID == transfer_syntax
        assert ds.SOPInstanceUID == ids["sop_uid"]
        assert np.array_equal(ds.pixel_array, reference)

    @pytest.mark.parametrize("transfer_syntax", [JPEGBaseline8Bit, JPEG2000Lossless, RLELossless])
    def test_encapsulated_transfer_syntaxes(self, transfer_syntax: str) -> None:
        ds = read(
            synth.make_instance(
                **unusual.new_uids(), rows=16, columns=16, frames=3, transfer_syntax=transfer_syntax
            )
        )
        assert ds.file_meta.TransferSyntaxUID == transfer_syntax
        frames = list(generate_frames(ds.PixelData, number_of_frames=3))
        assert len(frames) == 3
        assert all(f.startswith(b"\xff\xd8") and len(f) % 2 == 0 for f in frames)


class TestWriteInstance:
    def test_streams_large_files_quickly_in_bounded_memory(self, tmp_path: Path) -> None:
        path = tmp_path / "mf.dcm"
        tracemalloc.start()
        started = time.perf_counter()
        try:
            size = synth.write_instance(path, **unusual.new_uids(), frames=512)  # 256 MiB of pixels
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.perf_counter() - started < 10  # measured ~1 s: 2 GB in seconds
        assert size == path.stat().st_size > 256 << 20
        assert peak < 64 << 20
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.NumberOfFrames == 512

    def test_sparse_2gb(self, tmp_path: Path) -> None:
        path = tmp_path / "sparse.dcm"
        size = synth.write_instance(path, **unusual.new_uids(), frames=4000, sparse=True)
        assert size == path.stat().st_size == 4000 * 512 * 512 * 2 + (size - 4000 * 512 * 512 * 2)
        assert size > 2_000_000_000
        ds = pydicom.dcmread(path, defer_size=1024)
        assert ds.NumberOfFrames == 4000

    def test_same_bytes_as_make_instance(self, tmp_path: Path) -> None:
        ids = unusual.new_uids()
        path = tmp_path / "x.dcm"
        synth.write_instance(path, **ids, rows=32, columns=32, seed=5)
        assert path.read_bytes() == synth.make_instance(**ids, rows=32, columns=32, seed=5)


class TestWriteStudy:
    def test_flat(self, tmp_path: Path) -> None:
        study = synth.write_study(tmp_path, instances=6, rows=16, columns=16, series=2)
        assert len(study.paths) == len(set(study.sop_uids)) == 6
        assert study.total_bytes == sum(p.stat().st_size for p in study.paths)
        assert all(p.suffix == ".dcm" and p.parent == tmp_path for p in study.paths)
        datasets = [pydicom.dcmread(p) for p in study.paths]
        assert {ds.StudyInstanceUID for ds in datasets} == {study.study_uid}
        assert [ds.SOPInstanceUID for ds in datasets] == study.sop_uids
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 2
        assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3, 4, 5, 6]

    def test_study_uid_and_patient(self, tmp_path: Path) -> None:
        uid = generate_uid()
        study = synth.write_study(
            tmp_path, instances=2, rows=8, columns=8, study_uid=uid, patient_name="ROE^RICHARD"
        )
        assert study.study_uid == uid
        assert pydicom.dcmread(study.paths[1]).PatientName == "ROE^RICHARD"

    def test_unknown_keyword_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(TypeError):
            synth.write_study(tmp_path, instances=1, patient_nam="typo")

    def test_nested_without_extensions(self, tmp_path: Path) -> None:
        study = synth.write_study(tmp_path, instances=3, rows=8, columns=8, nested=True)
        for path in study.paths:
            relative = path.relative_to(tmp_path)
            assert relative.parts[0] == "DICOM"
            assert len(relative.parts) == 4
            assert path.suffix == ""
        assert not (tmp_path / "DICOMDIR").exists()

    def test_cd_export_with_dicomdir(self, tmp_path: Path) -> None:
        study = synth.write_study(
            tmp_path, instances=4, rows=8, columns=8, with_dicomdir=True, series=2
        )
        assert study.dicomdir == tmp_path / "DICOMDIR"
        assert all(p.suffix == "" and len(p.relative_to(tmp_path).parts) > 1 for p in study.paths)
        assert [pydicom.dcmread(p).SOPInstanceUID for p in study.paths] == study.sop_uids
        fs = FileSet(study.dicomdir)
        assert len(fs) == 4
        assert {Path(i.path) for i in fs} == set(study.paths)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["DICOMDIR", "PT000000"]

    def test_300_instances_in_seconds(self, tmp_path: Path) -> None:
        started = time.perf_counter()
        study = synth.write_study(tmp_path, instances=300)
        assert time.perf_counter() - started < 15  # measured ~1 s
        assert study.total_bytes > 300 * 512 * 512 * 2


class TestHostileFiles:
    def test_preamble_executable(self) -> None:
        data = unusual.make_preamble_executable()
        assert data[:2] == b"MZ"
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        assert data[pe : pe + 4] == b"PE\x00\x00"
        assert read(data).SOPInstanceUID  # otherwise a valid instance

    def test_tiff_preamble(self) -> None:
        data = unusual.make_tiff_preamble()
        assert data[:4] == b"II*\x00"
        assert read(data).SOPInstanceUID

    def test_truncated(self) -> None:
        assert unusual.make_truncated(b"abcdef", keep=4) == b"abcd"

    def test_deflate_bomb_is_small_and_inflates_to_what_it_says(self) -> None:
        def meta_end(data: bytes) -> int:
            # each bomb has its own UIDs, of random length: its own meta group length
            return 132 + 12 + int(struct.unpack_from("<I", data, 140)[0])

        bomb = unusual.make_deflate_bomb()  # 2 GiB
        assert len(bomb) < 4 << 20
        bomb_meta_end = meta_end(bomb)
        assert DeflatedExplicitVRLittleEndian.encode() in bomb[:bomb_meta_end]
        # the inflated header declares ~2 GiB of pixel data
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(bomb[bomb_meta_end:], 4096)
        offset = head.index(b"\xe0\x7f\x10\x00OW")
        declared = struct.unpack_from("<I", head, offset + 8)[0]
        assert declared > (2 << 30) - 4096
        # a smaller one, inflated completely (streaming): one valid stream of that size
        small = unusual.make_deflate_bomb(inflated_bytes=32 << 20)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        data = small[meta_end(small) :]
        while not inflater.eof:
            total += len(inflater.decompress(data, 1 << 20))
            data = inflater.unconsumed_tail
            assert data or inflater.eof
        assert total == 32 << 20
        assert read(small).StudyInstanceUID

    def test_deep_nesting(self) -> None:
        ds = read(unusual.make_deep_nesting(depth=20))
        depth = 0
        items = ds
        while "ContentSequence" in items:
            items = items.ContentSequence[0]
            depth += 1
        assert depth == 20
        with pytest.raises(RecursionError):
            read(unusual.make_deep_nesting())  # 5000: too deep for pydicom

    def test_no_preamble(self) -> None:
        data = unusual.make_no_preamble()
        assert data[:2] == b"\x08\x00"
        assert b"DICM" not in data[:200]
        ds = read(data, force=True)
        assert ds.SOPInstanceUID
        assert ds.StudyInstanceUID

    def test_big_endian(self) -> None:
        ds = read(unusual.make_big_endian())
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
        assert ds.pixel_array.shape == (16, 16)

    @pytest.mark.parametrize(
        "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
    )
    def test_missing_uid(self, keyword: str) -> None:
        ds = read(unusual.make_missing_uid(keyword))
        assert keyword not in ds
        assert {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"} - {keyword} <= set(
            ds.dir()
        )

    def test_jpeg_compressed(self) -> None:
        ds = read(unusual.make_jpeg_compressed(frames=2))
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert len(list(generate_frames(ds.PixelData, number_of_frames=2))) == 2

    def test_many_fragments(self) -> None:
        ds = read(unusual.make_many_fragments(fragments=10))
        assert len(list(generate_fragments(ds.PixelData))) == 11  # + the offset table

    def test_dicomdir(self) -> None:
        ds = read(unusual.make_dicomdir_bytes(instances=3))
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
        kinds = [record.DirectoryRecordType for record in ds.DirectoryRecordSequence]
        assert kinds.count("IMAGE") == 3
        assert {"PATIENT", "STUDY", "SERIES"} <= set(kinds)
