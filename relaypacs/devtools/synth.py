"""Synthetic DICOM studies for tests, benchmarks and demos (unusual and hostile files:
relaypacs.devtools.unusual).

Everything here is fake: the patient name, id and birth date are fake PHI that tests grep
for in logs and responses. Every patient name and birth date that the tests, the benchmark
and demos put in DICOM data or manifests is one of :data:`FAKE_PATIENTS`, so that the test
suite can look for all of them in the server logs of its whole run (``tests/phiscan.py``).
Pixel data is deterministic pseudo-random 12-bit noise (``seed``), generated in chunks so
that a multi-gigabyte instance can be written in seconds without holding it in memory
(:func:`write_instance`).
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, TypedDict

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

__all__ = [
    "CT_IMAGE_STORAGE",
    "DEFAULT_PATIENT",
    "FAKE_PATIENTS",
    "MULTIFRAME_SC_STORAGE",
    "FakePatient",
    "SynthStudy",
    "make_instance",
    "write_instance",
    "write_study",
]

CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_SC_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.7.3"
"""Multi-frame Grayscale Word Secondary Capture Image Storage."""

_PIXEL_CHUNK: Final = 8 << 20
_MAX_PIXEL_BYTES: Final = 0xFFFFFFFE
_UNDEFINED: Final = 0xFFFFFFFF

# A DOS/PE stub: "MZ", e_lfanew (0x3C) -> 0x40 where the "PE\0\0" signature and a COFF
# header (x86-64, 0 sections) follow. Enough for `file` and for AV signatures to say PE.
_PE_PREAMBLE: Final = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    + b"\xb8"
    + bytes(7)
    + b"\x40"
    + bytes(35)
    + struct.pack("<I", 0x40)
    + b"PE\x00\x00"
    + struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 0, 0x22)
).ljust(128, b"\x00")
# A little-endian TIFF header whose first IFD is right after the preamble area.
_TIFF_PREAMBLE: Final = (b"II*\x00" + struct.pack("<I", 0x80)).ljust(128, b"\x00")


@dataclass(frozen=True)
class FakePatient:
    """A made-up patient of the test data: a DICOM person name (``^`` between its parts,
    ``=`` between its alphabetic, ideographic and phonetic groups), an id, a birth date
    (``YYYYMMDD``)."""

    name: str
    patient_id: str
    birth_date: str


DEFAULT_PATIENT: Final = FakePatient("QUAXWORTHY^PERPETUA", "TEST0001", "19310412")
"""The patient of every synthetic instance and manifest that does not choose another one.
Its name and birth date appear nowhere else (no word of a log line, no epoch date)."""

FAKE_PATIENTS: Final[tuple[FakePatient, ...]] = (
    DEFAULT_PATIENT,
    # tests/security/test_phi_logs.py
    FakePatient("ZZPHITEST^QUINTILIA^MARGARETHE", "ZZPID77341", "19230917"),
    # Chosen names and dates of tests/devtools, tests/dicom, tests/cli, tests/security.
    FakePatient("DOE^JANE", "X9", "19450203"),
    FakePatient("ROE^RICHARD", "TEST0001", "19310412"),
    # Character sets (ISO_IR 100, 144 and 192, ISO 2022 IR 87; the examples of DICOM PS3.5).
    FakePatient("MÜLLER^JÜRGEN", "TEST0001", "19310412"),
    FakePatient("\u0418\u0432\u0430\u043d", "TEST0001", "19310412"),
    FakePatient("Wang^XiaoDong 王", "TEST0001", "19310412"),
    FakePatient("Yamada^Tarou", "TEST0001", "19310412"),
    FakePatient("Hong^Gildong=洪^吉洞=", "TEST0001", "19310412"),
)
"""Every fake patient of the test data: ``tests/phiscan.py`` fails the test run when a name
(or a part of one) or a birth date of these is in a server log;
``tests/devtools/test_fake_patients.py`` checks that the tests use no other."""


class _Patient(TypedDict):
    patient_name: str
    patient_id: str
    birth_date: str
    study_date: str
    accession_number: str
    study_description: str


_DEFAULT_PATIENT: Final[_Patient] = {
    "patient_name": DEFAULT_PATIENT.name,
    "patient_id": DEFAULT_PATIENT.patient_id,
    "birth_date": DEFAULT_PATIENT.birth_date,
    "study_date": "20240102",
    "accession_number": "ACC0001",
    "study_description": "SYNTHETIC STUDY",
}


@dataclass(frozen=True)
class SynthStudy:
    study_uid: str
    paths: list[Path]
    sop_uids: list[str]
    total_bytes: int
    dicomdir: Path | None = None


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def _header(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    rows: int,
    columns: int,
    frames: int,
    instance_number: int,
    patient_name: str,
    patient_id: str,
    birth_date: str,
    modality: str,
    transfer_syntax: str,
    sop_class_uid: str | None,
    series_number: int,
    study_date: str,
    accession_number: str,
    study_description: str,
) -> Dataset:
    """The data set of an image without its pixel data, with its file meta."""
    ts = UID(transfer_syntax)
    sop_class = sop_class_uid or (CT_IMAGE_STORAGE if frames == 1 else MULTIFRAME_SC_STORAGE)
    bits = 8 if ts == JPEGBaseline8Bit else 16
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession_number
    ds.Modality = modality
    ds.Manufacturer = "RelayPACS synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"SYNTHETIC SERIES {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "O"
    ds.SliceThickness = "1.0"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, float(instance_number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) <= 62 else study_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 40.0
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = bits
    ds.BitsStored = 8 if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    return ds


def _encode(ds: Dataset, *, implicit: bool, little_endian: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little_endian
    write_dataset(fp, ds)
    return fp.getvalue()


def _encode_meta(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    return fp.getvalue()


def _element_header(
    group: int, element: int, vr: bytes, length: int, *, implicit: bool, little_endian: bool
) -> bytes:
    """Header of an element with a 32-bit length (OB, OW, SQ, UN...)."""
    order = "<" if little_endian else ">"
    if implicit:
        return struct.pack(order + "HHI", group, element, length)
    return struct.pack(order + "HH2sHI", group, element, vr, 0, length)


def _noise(n_bytes: int, seed: int, *, little_endian: bool = True) -> Iterator[bytes]:
    """``n_bytes`` of deterministic 12-bit noise as 16-bit words, in chunks."""
    rng = np.random.default_rng(seed)
    dtype = "<u2" if little_endian else ">u2"
    left = n_bytes
    while left > 0:
        n = min(left, _PIXEL_CHUNK)
        yield rng.integers(0, 4096, size=n // 2, dtype=np.uint16).astype(dtype).tobytes()
        left -= n


def _fake_frames(frames: int, rows: int, columns: int, seed: int) -> list[bytes]:
    """Frames that look like JPEG streams (SOI ... EOI) but are not decodable images."""
    rng = np.random.default_rng(seed)
    size = max(16, rows * columns // 8) & ~1  # even: fragments have even lengths
    return [b"\xff\xd8\xff\xdb" + rng.bytes(size) + b"\xff\xd9" for _ in range(frames)]


def _emit(
    out: BinaryIO,
    ds: Dataset,
    *,
    preamble: bytes | None,
    with_meta: bool,
    frames: int,
    seed: int,
    sparse: bool = False,
) -> int:
    """Write the file for ``ds`` (a header from :func:`_header`) and its pixel data."""
    ts = UID(ds.file_meta.TransferSyntaxUID)
    implicit = ts == ImplicitVRLittleEndian
    little_endian = ts != ExplicitVRBigEndian
    written = 0
    if with_meta:
        head = (preamble if preamble is not None else bytes(128)) + b"DICM" + _encode_meta(ds)
        out.write(head)
        written += len(head)
    body = _encode(ds, implicit=implicit, little_endian=little_endian)
    rows, columns = int(ds.Rows), int(ds.Columns)

    if ts.is_encapsulated:
        pixels = encapsulate(_fake_frames(frames, rows, columns, seed), has_bot=True)
        pixels += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)  # sequence delimiter
        pixel_header = _element_header(
            0x7FE0, 0x0010, b"OB", _UNDEFINED, implicit=False, little_endian=True
        )
        data = body + pixel_header + pixels
        out.write(data)
        return written + len(data)

    n_bytes = rows * columns * frames * 2
    if n_bytes > _MAX_PIXEL_BYTES:
        raise ValueError(f"{n_bytes} bytes of pixel data do not fit in one element")
    pixel_header = _element_header(
        0x7FE0, 0x0010, b"OW", n_bytes, implicit=implicit, little_endian=little_endian
    )
    if ts.is_deflated:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        for block in (body + pixel_header, *_noise(n_bytes, seed)):
            data = compressor.compress(block)
            out.write(data)
            written += len(data)
        data = compressor.flush()
        out.write(data)
        return written + len(data)

    out.write(body + pixel_header)
    written += len(body) + len(pixel_header)
    if sparse:
        # A hole instead of the pixel data: instant, takes no disk space, reads as zeros.
        out.seek(n_bytes - 2, 1)
        out.write(b"\x01\x00")
        return written + n_bytes
    for chunk in _noise(n_bytes, seed, little_endian=little_endian):
        out.write(chunk)
        written += len(chunk)
    return written


# --------------------------------------------------------------------------------------
# Valid instances and studies
# --------------------------------------------------------------------------------------


def make_instance(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    rows: int = 512,
    columns: int = 512,
    frames: int = 1,
    instance_number: int = 1,
    patient_name: str = DEFAULT_PATIENT.name,
    patient_id: str = DEFAULT_PATIENT.patient_id,
    birth_date: str = DEFAULT_PATIENT.birth_date,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    sop_class_uid: str | None = None,
    series_number: int = 1,
    study_date: str = "20240102",
    accession_number: str = "ACC0001",
    study_description: str = "SYNTHETIC STUDY",
    preamble: bytes | None = None,
) -> bytes:
    """A valid Part-10 file (128-byte preamble, ``DICM``, file meta, data set) of a CT
    image (a multi-frame grayscale word secondary capture when ``frames > 1``) with 16-bit
    pixel data. Any transfer syntax: native (implicit/explicit little endian, explicit big
    endian), deflated, or encapsulated (JPEG, JPEG 2000, RLE, JPEG-LS: fake frames that are
    correctly encapsulated but not decodable)."""
    ds = _header(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        rows=rows,
        columns=columns,
        frames=frames,
        instance_number=instance_number,
        patient_name=patient_name,
        patient_id=patient_id,
        birth_date=birth_date,
        modality=modality,
        transfer_syntax=transfer_syntax,
        sop_class_uid=sop_class_uid,
        series_number=series_number,
        study_date=study_date,
        accession_number=accession_number,
        study_description=study_description,
    )
    out = io.BytesIO()
    _emit(out, ds, preamble=preamble, with_meta=True, frames=frames, seed=seed)
    return out.getvalue()


def write_instance(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    rows: int = 512,
    columns: int = 512,
    frames: int = 1,
    instance_number: int = 1,
    patient_name: str = DEFAULT_PATIENT.name,
    patient_id: str = DEFAULT_PATIENT.patient_id,
    birth_date: str = DEFAULT_PATIENT.birth_date,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    sop_class_uid: str | None = None,
    series_number: int = 1,
    study_date: str = "20240102",
    accession_number: str = "ACC0001",
    study_description: str = "SYNTHETIC STUDY",
    sparse: bool = False,
) -> int:
    """Like :func:`make_instance` but streamed to ``path`` (bounded memory whatever the
    size); returns the file size. With ``sparse`` (native transfer syntaxes only), the
    pixel data is a hole in the file: a 2 GB multi-frame file is written instantly."""
    ds = _header(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        rows=rows,
        columns=columns,
        frames=frames,
        instance_number=instance_number,
        patient_name=patient_name,
        patient_id=patient_id,
        birth_date=birth_date,
        modality=modality,
        transfer_syntax=transfer_syntax,
        sop_class_uid=sop_class_uid,
        series_number=series_number,
        study_date=study_date,
        accession_number=accession_number,
        study_description=study_description,
    )
    ts = UID(transfer_syntax)
    if sparse and (ts.is_deflated or ts.is_encapsulated):
        raise ValueError("sparse pixel data needs a native transfer syntax")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        return _emit(
            out, ds, preamble=None, with_meta=True, frames=frames, seed=seed, sparse=sparse
        )


def write_study(
    directory: Path,
    *,
    instances: int,
    rows: int = 512,
    columns: int = 512,
    frames: int = 1,
    study_uid: str | None = None,
    with_dicomdir: bool = False,
    nested: bool = False,
    seed: int = 0,
    series: int = 1,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    **patient: str,
) -> SynthStudy:
    """Write a study of ``instances`` images in ``series`` series under ``directory``.

    Layouts: flat ``IM000001.dcm`` files (default); ``nested``: files without extension
    under ``DICOM/ST000001/SE000001/IM000001``; ``with_dicomdir``: a CD export made by
    pydicom's :class:`~pydicom.fileset.FileSet` (``DICOMDIR`` at the root, files without
    extension under ``PT000000/ST000000/SE000000/IM000000``). ``patient`` may set
    ``patient_name``, ``patient_id``, ``birth_date``, ``study_date``,
    ``accession_number``, ``study_description``.
    """
    if unknown := set(patient) - set(_DEFAULT_PATIENT):
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    fields: _Patient = {
        "patient_name": patient.get("patient_name", _DEFAULT_PATIENT["patient_name"]),
        "patient_id": patient.get("patient_id", _DEFAULT_PATIENT["patient_id"]),
        "birth_date": patient.get("birth_date", _DEFAULT_PATIENT["birth_date"]),
        "study_date": patient.get("study_date", _DEFAULT_PATIENT["study_date"]),
        "accession_number": patient.get("accession_number", _DEFAULT_PATIENT["accession_number"]),
        "study_description": patient.get(
            "study_description", _DEFAULT_PATIENT["study_description"]
        ),
    }
    if instances < 1 or series < 1:
        raise ValueError("instances and series must be >= 1")
    study = study_uid or generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    directory.mkdir(parents=True, exist_ok=True)

    specs = []
    for i in range(instances):
        s = i * series // instances
        specs.append((i, s, generate_uid()))

    def target(i: int, s: int) -> Path:
        if nested:
            return directory / "DICOM" / "ST000001" / f"SE{s + 1:06d}" / f"IM{i + 1:06d}"
        return directory / f"IM{i + 1:06d}.dcm"

    if not with_dicomdir:
        paths: list[Path] = []
        total = 0
        for i, s, sop in specs:
            path = target(i, s)
            total += write_instance(
                path,
                study_uid=study,
                series_uid=series_uids[s],
                sop_uid=sop,
                rows=rows,
                columns=columns,
                frames=frames,
                instance_number=i + 1,
                series_number=s + 1,
                modality=modality,
                transfer_syntax=transfer_syntax,
                seed=seed + i,
                **fields,
            )
            paths.append(path)
        return SynthStudy(study, paths, [sop for _, _, sop in specs], total)

    # CD export: stage the files, let pydicom's FileSet lay them out and write DICOMDIR.
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=directory) as staging:
        fs = FileSet()
        for i, s, sop in specs:
            path = Path(staging) / f"{i:06d}"
            write_instance(
                path,
                study_uid=study,
                series_uid=series_uids[s],
                sop_uid=sop,
                rows=rows,
                columns=columns,
                frames=frames,
                instance_number=i + 1,
                series_number=s + 1,
                modality=modality,
                transfer_syntax=transfer_syntax,
                seed=seed + i,
                **fields,
            )
            fs.add(path)
        fs.write(directory)
    by_sop = {instance.SOPInstanceUID: Path(instance.path) for instance in fs}
    paths = [by_sop[sop] for _, _, sop in specs]
    total = sum(p.stat().st_size for p in paths)
    return SynthStudy(study, paths, [sop for _, _, sop in specs], total, directory / "DICOMDIR")
