"""The study header of a DICOM file, read without importing pydicom.

``relaypacs.dicom.header.read_header`` decodes its few values with pydicom, whose import costs
about a second per run of the command (numpy included), several times what reading the headers
of a 300-file study costs. This module walks the file the same way (the gateway's bounded
walker), and decodes the values itself when that is unambiguous: single values in the default
character set, ISO_IR 100 (latin-1) or ISO_IR 192 (UTF-8). Anything else (ISO 2022 code
extensions, other character sets, multiple values, person names with ideographic or phonetic
groups, values that do not decode) goes to ``relaypacs.dicom.header.read_header``, so pydicom
is imported only for the files that need it, and its answer is taken as it is.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Final

from relaypacs.client.discovery import SkipReason
from relaypacs.dicom._walk import NOT_DICOM, _FileSource, _walk
from relaypacs.dicom.header import (
    _FIRST_READ,
    _PREFIX_LIMIT,
    StudyHeader,
    is_dicomdir,
    read_instance_prefix,
)
from relaypacs.dicom.header import read_header as pydicom_read_header
from relaypacs.dicom.inspect import (
    _TAG_DIRECTORY_RECORDS,
    _TAG_MEDIA_SOP_CLASS,
    _TAG_STUDY_UID,
    MEDIA_STORAGE_DIRECTORY,
    DicomLimits,
    DicomRejected,
    _parse,
    _valid_uid,
)

__all__ = ["StudyHeader", "is_dicomdir", "read_header", "read_instance", "why_not_an_instance"]

_LIMITS: Final = DicomLimits()

_CHARSET: Final = 0x00080005
_SOP_INSTANCE: Final = 0x00080018
_STUDY_DATE: Final = 0x00080020
_ACCESSION: Final = 0x00080050
_MODALITY: Final = 0x00080060
_STUDY_DESCRIPTION: Final = 0x00081030
_PATIENT_NAME: Final = 0x00100010
_PATIENT_ID: Final = 0x00100020
_WANTED: Final = frozenset(
    {
        _CHARSET,
        _SOP_INSTANCE,
        _STUDY_DATE,
        _ACCESSION,
        _MODALITY,
        _STUDY_DESCRIPTION,
        _PATIENT_NAME,
        _PATIENT_ID,
        _TAG_STUDY_UID,
    }
)
# Decoded with the data set's character set (pydicom: PN, LO, SH).
_TEXT_TAGS: Final = (_PATIENT_NAME, _PATIENT_ID, _STUDY_DESCRIPTION, _ACCESSION)
# Decoded with the default character set whatever the data set's (pydicom: UI, DA, CS).
_ASCII_TAGS: Final = (_SOP_INSTANCE, _STUDY_DATE, _MODALITY)
# Specific Character Set values decoded here, as pydicom maps them.
_CODECS: Final = {
    "": "latin-1",
    "ISO_IR 6": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
}


class _Undecided(Exception):
    """A value this module does not decode exactly as pydicom would."""


def read_header(path: Path) -> StudyHeader | None:
    """The study header of a DICOM instance; ``None`` if ``path`` is not one (not DICOM,
    a DICOMDIR, unreadable, broken before its StudyInstanceUID, no valid
    StudyInstanceUID). The same answer as ``relaypacs.dicom.header.read_header``."""
    prefix = read_instance_prefix(path)
    if prefix is None:
        return None
    try:
        walk = _walk(
            _FileSource(io.BytesIO(prefix.data), len(prefix.data), prefix.data),
            0,
            implicit=prefix.implicit,
            little_endian=prefix.little_endian,
            limits=_LIMITS,
            wanted=_WANTED,
        )
        return _decode(prefix.study_instance_uid, walk.values, walk.seen)
    except (_Undecided, DicomRejected):
        return _with_pydicom(path)


def read_instance(path: Path) -> StudyHeader | SkipReason:
    """The study header of a DICOM instance, or why ``path`` is not one."""
    header = read_header(path)
    return why_not_an_instance(path) if header is None else header


def why_not_an_instance(path: Path) -> SkipReason:
    """Why ``read_header`` finds no instance in ``path``: the same bounded read of the start
    of the file, its failure named. Only for the files without a header (the read is done
    again: an instance's header is read once)."""
    try:
        parsed = _parse(
            path,
            _LIMITS,
            stop=_TAG_STUDY_UID,
            prefix_limit=_PREFIX_LIMIT,
            refuse_executable_preamble=False,
            first_read=_FIRST_READ,
        )
    except OSError:
        return SkipReason.UNREADABLE
    except MemoryError:
        return SkipReason.DAMAGED
    except DicomRejected as exc:
        if exc.code == NOT_DICOM:
            return SkipReason.NOT_DICOM
        # A DICOMDIR with broken records is still a DICOMDIR (never sent).
        return SkipReason.DICOMDIR if is_dicomdir(path) else SkipReason.DAMAGED
    if (
        _valid_uid(parsed.meta.values.get(_TAG_MEDIA_SOP_CLASS)) == MEDIA_STORAGE_DIRECTORY
        or _TAG_DIRECTORY_RECORDS in parsed.dataset.seen
    ):
        return SkipReason.DICOMDIR
    if not parsed.dataset.elements and parsed.dataset.stopped_at is None:
        return SkipReason.DAMAGED  # a preamble and a file meta, no data set
    if _valid_uid(parsed.dataset.values.get(_TAG_STUDY_UID)) is None:
        return SkipReason.NO_STUDY_UID  # none, empty, or not a UID
    # More than 16 MiB before the StudyInstanceUID, or values that pydicom cannot decode.
    return SkipReason.DAMAGED


def _decode(study_uid: str, values: dict[int, bytes], seen: set[int]) -> StudyHeader:
    if seen - values.keys():
        raise _Undecided  # a value too long to be captured, or of undefined length
    charset = _text(values.get(_CHARSET, b""), "latin-1")
    codec = _CODECS.get(charset or "")
    if codec is None:
        raise _Undecided
    decoded: dict[int, str | None] = {}
    for tag in _ASCII_TAGS:
        raw = values.get(tag)
        if raw is not None and not raw.isascii():
            raise _Undecided
        decoded[tag] = None if raw is None else _text(raw, "ascii")
    for tag in _TEXT_TAGS:
        raw = values.get(tag)
        decoded[tag] = None if raw is None else _text(raw, codec)
    name = decoded[_PATIENT_NAME]
    if name is not None and "=" in name:
        raise _Undecided  # several component groups: pydicom's PersonName decides
    return StudyHeader(
        study_instance_uid=study_uid,
        sop_instance_uid=decoded[_SOP_INSTANCE],
        patient_name=name,
        patient_id=decoded[_PATIENT_ID],
        study_date=decoded[_STUDY_DATE],
        modality=decoded[_MODALITY],
        study_description=decoded[_STUDY_DESCRIPTION],
        accession_number=decoded[_ACCESSION],
    )


def _text(raw: bytes, codec: str) -> str | None:
    """One value as pydicom's ``str(value).strip("\\x00 ")``, or _Undecided."""
    if b"\x1b" in raw or b"\\" in raw:
        raise _Undecided  # code extensions, or several values
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        raise _Undecided from None
    return text.strip("\x00 ") or None


_PYDICOM_LOCK = threading.Lock()


def _with_pydicom(path: Path) -> StudyHeader | None:
    """``relaypacs.dicom.header.read_header``, importing pydicom on first use (once, even when
    several threads need it at the same time)."""
    with _PYDICOM_LOCK:
        import pydicom.filereader  # noqa: F401

    return pydicom_read_header(path)
