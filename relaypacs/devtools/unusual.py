"""Unusual, hostile and broken DICOM files, for the validator's and the clients' tests: an
executable in the preamble, truncated files, big endian, deflate bombs, deep nesting, a million
fragments, a missing UID, a DICOMDIR. Built on relaypacs.devtools.synth's encoders."""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path
from typing import TypedDict

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from relaypacs.devtools.synth import (
    _DEFAULT_PATIENT,
    _MAX_PIXEL_BYTES,
    _PE_PREAMBLE,
    _TIFF_PREAMBLE,
    _UNDEFINED,
    _element_header,
    _emit,
    _encode,
    _encode_meta,
    _header,
    make_instance,
    write_study,
)

__all__ = [
    "Uids",
    "make_big_endian",
    "make_deep_nesting",
    "make_deflate_bomb",
    "make_dicomdir_bytes",
    "make_jpeg_compressed",
    "make_many_fragments",
    "make_missing_uid",
    "make_no_preamble",
    "make_preamble_executable",
    "make_tiff_preamble",
    "make_truncated",
    "new_uids",
]


class Uids(TypedDict):
    study_uid: str
    series_uid: str
    sop_uid: str


def new_uids() -> Uids:
    """Fresh study, series and SOP instance UIDs, as keyword arguments."""
    return {"study_uid": generate_uid(), "series_uid": generate_uid(), "sop_uid": generate_uid()}


def _small_header(transfer_syntax: str, *, rows: int = 16, columns: int = 16) -> Dataset:
    """The header of a small single-frame CT image with fresh UIDs and the default PHI."""
    return _header(
        **new_uids(),
        rows=rows,
        columns=columns,
        frames=1,
        instance_number=1,
        modality="CT",
        transfer_syntax=transfer_syntax,
        sop_class_uid=None,
        series_number=1,
        **_DEFAULT_PATIENT,
    )


def make_preamble_executable(*, rows: int = 16, columns: int = 16) -> bytes:
    """A valid instance whose preamble is a PE executable header (CVE-2019-11687)."""
    return make_instance(**new_uids(), rows=rows, columns=columns, preamble=_PE_PREAMBLE)


def make_tiff_preamble(*, rows: int = 16, columns: int = 16) -> bytes:
    """A valid instance with a non-zero but harmless preamble: a TIFF header, as in a
    dual-personality DICOM/TIFF file."""
    return make_instance(**new_uids(), rows=rows, columns=columns, preamble=_TIFF_PREAMBLE)


def make_truncated(data: bytes, keep: int) -> bytes:
    """The first ``keep`` bytes of ``data``."""
    return data[:keep]


def make_no_preamble(*, rows: int = 16, columns: int = 16) -> bytes:
    """A raw data set: no preamble, no ``DICM``, no file meta, implicit VR little endian
    (valid; starts with group 0008)."""
    ds = _small_header(ImplicitVRLittleEndian, rows=rows, columns=columns)
    out = io.BytesIO()
    _emit(out, ds, preamble=None, with_meta=False, frames=1, seed=0)
    return out.getvalue()


def make_big_endian(*, rows: int = 16, columns: int = 16) -> bytes:
    """A valid instance in explicit VR big endian (retired but found on old media)."""
    return make_instance(
        **new_uids(), rows=rows, columns=columns, transfer_syntax=ExplicitVRBigEndian
    )


def make_jpeg_compressed(
    *, transfer_syntax: str = JPEGBaseline8Bit, rows: int = 64, columns: int = 64, frames: int = 1
) -> bytes:
    """An instance with encapsulated pixel data (basic offset table + one fragment per
    frame) in a compressed transfer syntax; the fragments are not decodable images."""
    return make_instance(
        **new_uids(), rows=rows, columns=columns, frames=frames, transfer_syntax=transfer_syntax
    )


def make_missing_uid(missing: str = "SeriesInstanceUID") -> bytes:
    """A valid instance but for the absence of one UID element (``SeriesInstanceUID``,
    ``StudyInstanceUID``, ``SOPInstanceUID`` or ``SOPClassUID``)."""
    ds = _small_header(ExplicitVRLittleEndian)
    delattr(ds, missing)
    out = io.BytesIO()
    _emit(out, ds, preamble=None, with_meta=True, frames=1, seed=0)
    return out.getvalue()


def make_deflate_bomb(inflated_bytes: int = 2 << 30) -> bytes:
    """A deflated-transfer-syntax file whose data set inflates to about
    ``inflated_bytes`` (default 2 GiB) of zeros from about ``inflated_bytes / 1000`` bytes.

    Built without ever holding the inflated data: one deflate segment compressing 1 MiB of
    zeros is made once and repeated (each segment is byte-aligned by a full flush and
    refers to nothing before it, so concatenated segments form one valid stream).
    """
    ds = _small_header(DeflatedExplicitVRLittleEndian)
    body = _encode(ds, implicit=False, little_endian=True)
    pixel_bytes = inflated_bytes - len(body) - 12
    pixel_bytes -= pixel_bytes % 2
    if not 0 < pixel_bytes <= _MAX_PIXEL_BYTES:
        raise ValueError("inflated_bytes out of range")
    header = body + _element_header(
        0x7FE0, 0x0010, b"OW", pixel_bytes, implicit=False, little_endian=True
    )

    def segment(data: bytes, mode: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return c.compress(data) + c.flush(mode)

    block = 1 << 20
    full, rest = divmod(pixel_bytes, block)
    zeros = segment(bytes(block), zlib.Z_FULL_FLUSH)
    stream = segment(header, zlib.Z_FULL_FLUSH) + zeros * full + segment(bytes(rest), zlib.Z_FINISH)
    return bytes(128) + b"DICM" + _encode_meta(ds) + stream


def _nested_sequences(depth: int) -> bytes:
    """``depth`` Content Sequences (0040,A730) of undefined length, each holding one item
    of undefined length that holds the next one."""
    opening = _element_header(
        0x0040, 0xA730, b"SQ", _UNDEFINED, implicit=False, little_endian=True
    ) + struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def make_deep_nesting(depth: int = 5000) -> bytes:
    """A file whose sequences are nested ``depth`` deep (written as raw bytes: pydicom
    itself cannot write, nor read, that deep). Valid otherwise, without pixel data."""
    ds = _small_header(ExplicitVRLittleEndian)
    body = _encode(ds, implicit=False, little_endian=True)
    return bytes(128) + b"DICM" + _encode_meta(ds) + body + _nested_sequences(depth)


def make_many_fragments(fragments: int = 1_000_000) -> bytes:
    """A structurally valid JPEG-baseline instance whose pixel data is split into
    ``fragments`` empty fragments: small (8 bytes per fragment) but slow to walk. For
    testing the per-file time limit."""
    ds = _small_header(JPEGBaseline8Bit)
    body = _encode(ds, implicit=False, little_endian=True)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    return (
        bytes(128)
        + b"DICM"
        + _encode_meta(ds)
        + body
        + _element_header(0x7FE0, 0x0010, b"OB", _UNDEFINED, implicit=False, little_endian=True)
        + item * (fragments + 1)  # + the empty basic offset table
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )


def make_dicomdir_bytes(instances: int = 2) -> bytes:
    """The ``DICOMDIR`` of a small CD export written by :func:`write_study`."""
    with tempfile.TemporaryDirectory(prefix="relaypacs-synth-") as tmp:
        study = write_study(Path(tmp), instances=instances, rows=16, columns=16, with_dicomdir=True)
        assert study.dicomdir is not None
        return study.dicomdir.read_bytes()
