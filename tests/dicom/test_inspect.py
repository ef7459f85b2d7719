"""inspect_file: every per-file code, bounded memory and time."""

from __future__ import annotations

import os
import random
import struct
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
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from relaypacs.devtools import synth, unusual
from relaypacs.dicom import DicomLimits, DicomRejected, DicomSummary, inspect_file
from tests.dicom.samples import small

PHI = (
    synth.DEFAULT_PATIENT.name,
    synth.DEFAULT_PATIENT.patient_id,
    synth.DEFAULT_PATIENT.birth_date,
)

CODES = {
    "not_dicom",
    "dicom_truncated",
    "dicom_invalid",
    "dicom_missing_uid",
    "dicom_preamble_executable",
    "dicom_inflate_too_large",
    "dicom_too_deep",
    "dicom_resource_limit",
}


def rejection(path: Path, limits: DicomLimits | None = None) -> DicomRejected:
    with pytest.raises(DicomRejected) as info:
        inspect_file(path, limits or DicomLimits())
    assert info.value.code in CODES
    for phi in PHI:
        assert phi not in info.value.message
    return info.value


def outcome(path: Path) -> DicomSummary | DicomRejected:
    try:
        return inspect_file(path)
    except DicomRejected as exc:
        return exc


def pixel_data_offset(data: bytes) -> int:
    """Offset of the (7FE0,0010) element header in an explicit VR little endian file."""
    offset = data.rindex(b"\xe0\x7f\x10\x00")
    assert data[offset + 4 : offset + 6] in (b"OW", b"OB")
    return offset


# --------------------------------------------------------------------------------------
# Valid files
# --------------------------------------------------------------------------------------


class TestValidInstances:
    def test_ct_instance_summary(self, write: Callable[[bytes], Path]) -> None:
        ids = unusual.new_uids()
        path = write(synth.make_instance(**ids))
        assert inspect_file(path) == DicomSummary(
            kind="instance",
            study_instance_uid=ids["study_uid"],
            series_instance_uid=ids["series_uid"],
            sop_instance_uid=ids["sop_uid"],
            sop_class_uid=synth.CT_IMAGE_STORAGE,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            modality="CT",
            preamble="zero",
        )

    @pytest.mark.parametrize(
        "transfer_syntax",
        [
            ImplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian,
            "1.2.840.10008.1.2.4.50",  # JPEG baseline
            "1.2.840.10008.1.2.4.51",  # JPEG extended
            "1.2.840.10008.1.2.4.70",  # JPEG lossless
            "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
            "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
            "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
            "1.2.840.10008.1.2.4.91",  # JPEG 2000
            "1.2.840.10008.1.2.5",  # RLE
        ],
    )
    def test_accepts_transfer_syntax(
        self, write: Callable[[bytes], Path], transfer_syntax: str
    ) -> None:
        ids = unusual.new_uids()
        data = synth.make_instance(
            **ids, rows=64, columns=64, frames=3, transfer_syntax=transfer_syntax
        )
        summary = inspect_file(write(data))
        assert summary.transfer_syntax_uid == transfer_syntax
        assert summary.sop_instance_uid == ids["sop_uid"]
        assert summary.sop_class_uid == synth.MULTIFRAME_SC_STORAGE

    def test_file_without_preamble_is_valid(self, write: Callable[[bytes], Path]) -> None:
        data = unusual.make_no_preamble()
        assert data[128:132] != b"DICM"
        summary = inspect_file(write(data))
        assert summary.kind == "instance"
        assert summary.preamble == "absent"
        assert summary.transfer_syntax_uid is None
        assert summary.study_instance_uid == str(
            pydicom.dcmread(write(data), force=True).StudyInstanceUID
        )

    def test_big_endian_is_valid(self, write: Callable[[bytes], Path]) -> None:
        data = unusual.make_big_endian()
        summary = inspect_file(write(data))
        assert summary.transfer_syntax_uid == ExplicitVRBigEndian
        assert summary.series_instance_uid == str(pydicom.dcmread(write(data)).SeriesInstanceUID)

    def test_jpeg_pixel_data_is_not_decoded(self, write: Callable[[bytes], Path]) -> None:
        # The fragments are not JPEG images: decoding them would fail.
        summary = inspect_file(write(unusual.make_jpeg_compressed()))
        assert summary.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"

    def test_trailing_zero_padding_is_tolerated(self, write: Callable[[bytes], Path]) -> None:
        assert inspect_file(write(small() + b"\x00")).kind == "instance"

    def test_agrees_with_pydicom_on_its_test_files(self) -> None:
        """Every file of pydicom's own test corpus that pydicom reads completely with valid
        UIDs is accepted, with the same UIDs; the deliberately broken ones are rejected."""
        root = Path(pydicom.__file__).parent / "data"
        broken = {"MR_truncated.dcm", "rtplan_truncated.dcm", "DICOMDIR-nooffset"}
        checked = 0
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.name in broken:
                assert rejection(path).code == "dicom_truncated"
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ds = pydicom.dcmread(path)
                    ds.walk(lambda _ds, _elem: None)  # parse every sequence
                    expected = tuple(
                        str(ds[keyword].value)
                        for keyword in (
                            "StudyInstanceUID",
                            "SeriesInstanceUID",
                            "SOPInstanceUID",
                            "SOPClassUID",
                        )
                    )
                except Exception:
                    continue  # not a (complete) instance for pydicom either
            if not all(pydicom.uid.UID(uid).is_valid for uid in expected):
                continue
            summary = inspect_file(path)
            assert summary.kind == "instance", path
            assert (
                summary.study_instance_uid,
                summary.series_instance_uid,
                summary.sop_instance_uid,
                summary.sop_class_uid,
            ) == expected, path
            checked += 1
        assert checked >= 60  # big/little endian, implicit, deflated, JPEG*, RLE, RT, SR...


class TestDicomdir:
    def test_dicomdir_is_not_an_instance(self, write: Callable[[bytes], Path]) -> None:
        summary = inspect_file(write(unusual.make_dicomdir_bytes()))
        assert summary.kind == "dicomdir"
        assert summary.study_instance_uid is None
        assert summary.sop_class_uid == "1.2.840.10008.1.3.10"

    def test_directory_record_sequence_without_dicomdir_meta(
        self, write: Callable[[bytes], Path]
    ) -> None:
        data = unusual.make_dicomdir_bytes()
        # Relabel the Media Storage SOP Class as CT: the data set still makes it a DICOMDIR.
        patched = data.replace(b"1.2.840.10008.1.3.10", b"1.2.840.10008.1.3.11", 1)
        assert patched != data
        assert inspect_file(write(patched)).kind == "dicomdir"


# --------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------


class TestNotDicom:
    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\x00",
            bytes(131),
            bytes(132),
            bytes(128) + b"DICX" + bytes(200),
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" * 40,
            b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(300),
            b"\x89PNG\r\n\x1a\n" + bytes(300),
            b"Hello, this is a text file, not a medical image.\n" * 10,
            random.Random(1).randbytes(10_000),
        ],
        ids=["empty", "1byte", "131zeros", "132zeros", "DICX", "pdf", "zip", "png", "text", "rand"],
    )
    def test_rejects_non_dicom(self, write: Callable[[bytes], Path], data: bytes) -> None:
        assert rejection(write(data)).code == "not_dicom"


class TestPreamble:
    @pytest.mark.parametrize(
        "signature",
        [
            b"MZ",
            b"\x7fELF",
            b"\xfe\xed\xfa\xce",
            b"\xce\xfa\xed\xfe",
            b"\xfe\xed\xfa\xcf",
            b"\xcf\xfa\xed\xfe",
            b"\xca\xfe\xba\xbe",
            b"\xbe\xba\xfe\xca",
            b"#!/bin/sh\n",
        ],
    )
    def test_rejects_executable_preamble(
        self, write: Callable[[bytes], Path], signature: bytes
    ) -> None:
        data = small(preamble=signature.ljust(128, b"\x00"))
        assert rejection(write(data)).code == "dicom_preamble_executable"

    def test_rejects_pe_preamble_of_synth(self, write: Callable[[bytes], Path]) -> None:
        assert rejection(write(unusual.make_preamble_executable())).code == (
            "dicom_preamble_executable"
        )

    def test_tiff_preamble_is_accepted_as_nonzero(self, write: Callable[[bytes], Path]) -> None:
        summary = inspect_file(write(unusual.make_tiff_preamble()))
        assert summary.kind == "instance"
        assert summary.preamble == "nonzero"

    def test_zero_preamble(self, write: Callable[[bytes], Path]) -> None:
        assert inspect_file(write(small())).preamble == "zero"


class TestTruncated:
    def test_cut_pixel_data(self, write: Callable[[bytes], Path]) -> None:
        data = synth.make_instance(**unusual.new_uids())
        for keep in (len(data) - 1, len(data) - 2, len(data) // 2, pixel_data_offset(data) + 13):
            assert rejection(write(unusual.make_truncated(data, keep))).code == "dicom_truncated"

    def test_cut_inside_header(self, write: Callable[[bytes], Path]) -> None:
        ids = unusual.new_uids()
        data = synth.make_instance(**ids, rows=16, columns=16)
        inside_uid = data.index(ids["study_uid"].encode()) + 5
        inside_pixel_header = pixel_data_offset(data) + 6
        for keep in (140, inside_uid, inside_pixel_header):
            assert rejection(write(data[:keep])).code == "dicom_truncated"

    def test_every_cut_is_rejected_or_on_an_element_boundary(
        self, write: Callable[[bytes], Path]
    ) -> None:
        """Cutting a small file anywhere never crashes the parser; once the cut is inside
        the pixel data it is always dicom_truncated."""
        data = small()
        pixel_start = pixel_data_offset(data)
        for keep in range(len(data)):
            path = write(data[:keep])
            result = outcome(path)
            if isinstance(result, DicomRejected):
                assert result.code in CODES
                if keep > pixel_start:
                    assert result.code == "dicom_truncated", keep
            else:
                assert keep <= pixel_start, keep  # an instance without pixel data
            path.unlink()

    def test_cut_encapsulated_pixel_data(self, write: Callable[[bytes], Path]) -> None:
        data = unusual.make_jpeg_compressed(frames=2)
        for keep in (len(data) - 8, len(data) - 4, len(data) - 100):
            assert rejection(write(data[:keep])).code == "dicom_truncated"

    def test_cut_deflated_data_set(self, write: Callable[[bytes], Path]) -> None:
        data = small(transfer_syntax=DeflatedExplicitVRLittleEndian)
        assert rejection(write(data[: len(data) - 20])).code == "dicom_truncated"

    def test_cut_2gb_file_is_found_without_reading_it(self, tmp_path: Path) -> None:
        path = tmp_path / "big.dcm"
        size = synth.write_instance(path, **unusual.new_uids(), frames=4000, sparse=True)
        os.truncate(path, size - 1)
        started = time.perf_counter()
        assert rejection(path).code == "dicom_truncated"
        assert time.perf_counter() - started < 0.5


class TestMissingUid:
    @pytest.mark.parametrize(
        "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
    )
    def test_rejects_missing_uid(self, write: Callable[[bytes], Path], keyword: str) -> None:
        error = rejection(write(unusual.make_missing_uid(keyword)))
        assert error.code == "dicom_missing_uid"
        assert keyword in error.message

    @pytest.mark.parametrize("bad", ["1.2.abc", "1.02.3", "1..2", "1.2." + "3" * 70, "1.2\\1.3"])
    def test_rejects_invalid_uid(self, write: Callable[[bytes], Path], bad: str) -> None:
        ids = unusual.new_uids()
        ids["sop_uid"] = bad
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = synth.make_instance(**ids, rows=16, columns=16)
        error = rejection(write(data))
        assert error.code == "dicom_missing_uid"
        assert bad not in error.message


class TestDeflate:
    def test_rejects_deflate_bomb_quickly_in_bounded_memory(
        self, write: Callable[[bytes], Path]
    ) -> None:
        path = write(unusual.make_deflate_bomb())  # 2 GiB of zeros in ~2 MB
        tracemalloc.start()
        started = time.perf_counter()
        try:
            assert rejection(path).code == "dicom_inflate_too_large"
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.perf_counter() - started < 2
        assert peak < 4 << 20

    def test_bomb_is_a_valid_file_but_for_its_size(self, write: Callable[[bytes], Path]) -> None:
        # Same construction, 64 MiB: accepted when the limits allow it, so the rejection
        # above is the limit's doing and not a broken stream.
        path = write(unusual.make_deflate_bomb(inflated_bytes=64 << 20))
        generous = DicomLimits(max_inflate_ratio=10_000)
        assert inspect_file(path, generous).transfer_syntax_uid == DeflatedExplicitVRLittleEndian
        assert rejection(path).code == "dicom_inflate_too_large"  # ratio ~1000 > 200

    def test_max_inflated_bytes(self, write: Callable[[bytes], Path]) -> None:
        # Noise barely compresses: only the size limit can refuse it.
        path = write(
            synth.make_instance(
                **unusual.new_uids(),
                rows=1024,
                columns=1024,
                transfer_syntax=DeflatedExplicitVRLittleEndian,
            )
        )
        assert inspect_file(path).kind == "instance"
        small_limit = DicomLimits(max_inflated_bytes=1 << 20)
        assert rejection(path, small_limit).code == "dicom_inflate_too_large"

    def test_corrupt_deflate_stream_is_invalid(self, write: Callable[[bytes], Path]) -> None:
        data = bytearray(small(transfer_syntax=DeflatedExplicitVRLittleEndian))
        meta_end = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
        data[meta_end : meta_end + 16] = b"\xff" * 16
        assert rejection(write(bytes(data))).code == "dicom_invalid"


def _implicit_nested_defined_length(depth: int) -> bytes:
    """Implicit VR Content Sequences of *defined* length nested ``depth`` deep: only the
    data dictionary says that (0040,A730) is a sequence."""
    inner = b""
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HHI", 0x0040, 0xA730, len(item)) + item
    return inner


class TestNesting:
    def test_rejects_5000_deep_nesting(self, write: Callable[[bytes], Path]) -> None:
        data = unusual.make_deep_nesting(depth=5000)
        with pytest.raises(RecursionError):  # the file really is hostile for pydicom
            pydicom.dcmread(write(data))
        assert rejection(write(data)).code == "dicom_too_deep"

    def test_max_depth_is_accepted_one_more_is_not(self, write: Callable[[bytes], Path]) -> None:
        limits = DicomLimits(max_sequence_depth=16)
        assert inspect_file(write(unusual.make_deep_nesting(depth=16)), limits).kind == "instance"
        assert rejection(write(unusual.make_deep_nesting(depth=17)), limits).code == (
            "dicom_too_deep"
        )

    def test_defined_length_sequences_in_implicit_vr(self, write: Callable[[bytes], Path]) -> None:
        base = unusual.make_no_preamble()  # implicit VR, ends with pixel data
        pixel = base.rindex(b"\xe0\x7f\x10\x00")
        for depth, ok in ((16, True), (40, False)):
            data = base[:pixel] + _implicit_nested_defined_length(depth) + base[pixel:]
            if ok:
                assert inspect_file(write(data)).kind == "instance"
            else:
                assert rejection(write(data)).code == "dicom_too_deep"


class TestInvalid:
    def _with_sequence(self, content: bytes) -> bytes:
        data = small()
        pixel = pixel_data_offset(data)
        sq = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
        return data[:pixel] + sq + content + data[pixel:]

    def test_non_item_inside_sequence(self, write: Callable[[bytes], Path]) -> None:
        data = self._with_sequence(struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 2) + b"AB")
        assert rejection(write(data)).code == "dicom_invalid"

    def test_element_longer_than_its_item(self, write: Callable[[bytes], Path]) -> None:
        element = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 8) + b"ABCDEFGH"
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 4) + element  # item says 4 bytes
        data = self._with_sequence(item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        assert rejection(write(data)).code == "dicom_invalid"

    def test_invalid_transfer_syntax_uid(self, write: Callable[[bytes], Path]) -> None:
        data = small().replace(
            ExplicitVRLittleEndian.encode() + b"\x00", b"1.2.840.1000X.1.2.1\x00"
        )
        assert rejection(write(data)).code == "dicom_invalid"

    def test_random_corruption_never_crashes(self, write: Callable[[bytes], Path]) -> None:
        """Flipping bytes anywhere gives a summary or a DicomRejected, nothing else."""
        rng = random.Random(7)
        originals = [
            small(),
            small(transfer_syntax=ImplicitVRLittleEndian),
            small(transfer_syntax=DeflatedExplicitVRLittleEndian),
            unusual.make_jpeg_compressed(rows=16, columns=16),
            unusual.make_deep_nesting(depth=6),
            unusual.make_dicomdir_bytes(),
        ]
        for i in range(600):
            data = bytearray(originals[i % len(originals)])
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            path = write(bytes(data))
            result = outcome(path)
            assert isinstance(result, DicomSummary) or result.code in CODES
            path.unlink()

    def test_memory_error_is_a_resource_limit(
        self, write: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from relaypacs.dicom import inspect

        def _out_of_memory(*args: object, **kwargs: object) -> None:
            raise MemoryError

        monkeypatch.setattr(inspect, "_parse", _out_of_memory)
        assert rejection(write(small())).code == "dicom_resource_limit"


# --------------------------------------------------------------------------------------
# Memory and speed
# --------------------------------------------------------------------------------------


class TestBounds:
    def test_2gb_multiframe_in_bounded_memory(self, tmp_path: Path) -> None:
        path = tmp_path / "big.dcm"
        ids = unusual.new_uids()
        size = synth.write_instance(path, **ids, frames=4000, sparse=True)
        assert size > 2_000_000_000
        tracemalloc.start()
        started = time.perf_counter()
        try:
            summary = inspect_file(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert summary.sop_instance_uid == ids["sop_uid"]
        assert peak < 1 << 20
        assert time.perf_counter() - started < 0.5
