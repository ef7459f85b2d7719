"""Study-level header of a DICOM file, for the command-line client.

Only the start of the data set is read (up to StudyInstanceUID, well before the pixel
data), with the same bounded walk as the gateway's validator, then decoded by pydicom
(character sets included). A file that is not a DICOM instance gives ``None``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

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

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["InstancePrefix", "StudyHeader", "is_dicomdir", "read_header", "read_instance_prefix"]

_PREFIX_LIMIT: Final = 16 << 20
"""Files with more than this before their StudyInstanceUID are not read."""
_LIMITS: Final = DicomLimits()
# The first read of a header reader: an instance's header up to its StudyInstanceUID is
# usually under 2 KiB; reading 64 KiB (the validator's block) cost 6x more per file.
_FIRST_READ: Final = 8 << 10
_TAGS: Final = [
    0x00080005,  # SpecificCharacterSet
    0x00080018,  # SOPInstanceUID
    0x00080020,  # StudyDate
    0x00080050,  # AccessionNumber
    0x00080060,  # Modality
    0x00081030,  # StudyDescription
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    _TAG_STUDY_UID,
]


@dataclass(frozen=True)
class StudyHeader:
    study_instance_uid: str
    sop_instance_uid: str | None
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    modality: str | None
    study_description: str | None
    accession_number: str | None


def _string(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip("\x00 ")
    return text or None


@dataclass(frozen=True)
class InstancePrefix:
    """The start of an instance's data set, up to and including its StudyInstanceUID."""

    study_instance_uid: str
    data: bytes
    implicit: bool
    little_endian: bool


def read_instance_prefix(path: Path) -> InstancePrefix | None:
    """The bounded read that every header reader starts with (no pydicom); ``None`` if
    ``path`` is not an instance (not DICOM, a DICOMDIR, unreadable, broken before its
    StudyInstanceUID, no valid StudyInstanceUID)."""
    try:
        # An executable in the preamble is the gateway's to refuse (and audit), with a reason
        # the clinician sees; the client must not silently drop the file.
        parsed = _parse(
            path,
            _LIMITS,
            stop=_TAG_STUDY_UID,
            prefix_limit=_PREFIX_LIMIT,
            refuse_executable_preamble=False,
            first_read=_FIRST_READ,
        )
    except (DicomRejected, OSError, MemoryError):
        return None
    if (
        _valid_uid(parsed.meta.values.get(_TAG_MEDIA_SOP_CLASS)) == MEDIA_STORAGE_DIRECTORY
        or _TAG_DIRECTORY_RECORDS in parsed.dataset.seen
        or parsed.prefix is None
    ):
        return None
    study_uid = _valid_uid(parsed.dataset.values.get(_TAG_STUDY_UID))
    if study_uid is None:
        return None
    return InstancePrefix(study_uid, parsed.prefix, parsed.implicit, parsed.little_endian)


def read_header(path: Path) -> StudyHeader | None:
    """The study header of a DICOM instance; ``None`` if ``path`` is not one (see
    read_instance_prefix). Reads only the first elements of the file; imports pydicom (on
    first use) to decode the values."""
    prefix = read_instance_prefix(path)
    if prefix is None:
        return None
    from pydicom.filereader import read_dataset

    try:
        ds = read_dataset(
            io.BytesIO(prefix.data),
            prefix.implicit,
            prefix.little_endian,
            specific_tags=list(_TAGS),
        )
        return StudyHeader(
            study_instance_uid=prefix.study_instance_uid,
            sop_instance_uid=_string(ds, "SOPInstanceUID"),
            patient_name=_string(ds, "PatientName"),
            patient_id=_string(ds, "PatientID"),
            study_date=_string(ds, "StudyDate"),
            modality=_string(ds, "Modality"),
            study_description=_string(ds, "StudyDescription"),
            accession_number=_string(ds, "AccessionNumber"),
        )
    except Exception:  # pydicom cannot decode a value: not usable as an instance
        return None


def is_dicomdir(path: Path) -> bool:
    """Whether ``path`` is a DICOMDIR (by its Media Storage SOP Class, or a Directory
    Record Sequence in its data set). Reads only the start of the file."""
    try:
        # stop at the Directory Record Sequence (which may be long) without walking it
        parsed = _parse(path, _LIMITS, stop=_TAG_DIRECTORY_RECORDS - 1, first_read=_FIRST_READ)
    except (DicomRejected, OSError, MemoryError):
        return False
    return (
        _valid_uid(parsed.meta.values.get(_TAG_MEDIA_SOP_CLASS)) == MEDIA_STORAGE_DIRECTORY
        or parsed.dataset.stopped_at == _TAG_DIRECTORY_RECORDS
    )
