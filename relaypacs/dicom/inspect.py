"""Bounded validation of uploaded DICOM files.

:func:`inspect_file` walks *every* data element of a file (nested sequences, encapsulated
fragments, pixel data included) without recursion and without reading values into memory,
checking each declared length against the bytes that actually exist. It only reads the
few values it reports (UIDs, modality, transfer syntax), so its memory use is constant
whatever the file size: a 2 GB multi-frame file is inspected by reading a few kilobytes.

The walk follows pydicom's own reading rules (file meta, transfer-syntax guessing, the
explicit/implicit VR heuristics, "UN" with undefined length read as a sequence), so a file
accepted here can be read by pydicom, and pydicom never has to recurse deeper than
``max_sequence_depth`` on it.

Nothing here knows about HTTP or the database; messages never contain patient data (they
describe what is wrong with the file, with tags and byte offsets only). The walk itself is in
``_walk.py``; :class:`relaypacs.dicom.pool.DicomValidator` runs :func:`inspect_file` in capped
worker processes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from relaypacs.dicom._walk import (
    _BE_U16,
    _BE_U32,
    _LE_U16,
    _LE_U32,
    _READ_CHUNK,
    _UNDEFINED,
    _VR_ALL,
    INFLATE_TOO_LARGE,
    INVALID,
    MISSING_UID,
    NOT_DICOM,
    PREAMBLE_EXECUTABLE,
    RESOURCE_LIMIT,
    TOO_DEEP,
    TRUNCATED,
    DicomLimits,
    DicomRejected,
    _FileSource,
    _InflateSource,
    _invalid,
    _Source,
    _Walk,
    _walk,
)

__all__ = [
    "INFLATE_TOO_LARGE",
    "INVALID",
    "MISSING_UID",
    "NOT_DICOM",
    "PREAMBLE_EXECUTABLE",
    "RESOURCE_LIMIT",
    "TOO_DEEP",
    "TRUNCATED",
    "DicomLimits",
    "DicomRejected",
    "DicomSummary",
    "inspect_file",
]


@dataclass(frozen=True)
class DicomSummary:
    """What the gateway needs to know about a valid file."""

    kind: Literal["instance", "dicomdir"]
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    modality: str | None
    preamble: Literal["zero", "absent", "nonzero"]


# --------------------------------------------------------------------------------------
# DICOM constants
# --------------------------------------------------------------------------------------

IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
MEDIA_STORAGE_DIRECTORY: Final = "1.2.840.10008.1.3.10"

_TAG_MEDIA_SOP_CLASS: Final = 0x00020002
_TAG_MEDIA_SOP_INSTANCE: Final = 0x00020003
_TAG_TRANSFER_SYNTAX: Final = 0x00020010
_TAG_DIRECTORY_RECORDS: Final = 0x00041220
_TAG_SOP_CLASS: Final = 0x00080016
_TAG_SOP_INSTANCE: Final = 0x00080018
_TAG_MODALITY: Final = 0x00080060
_TAG_STUDY_UID: Final = 0x0020000D
_TAG_SERIES_UID: Final = 0x0020000E

_META_WANTED: Final = frozenset(
    {_TAG_MEDIA_SOP_CLASS, _TAG_MEDIA_SOP_INSTANCE, _TAG_TRANSFER_SYNTAX}
)
_DATASET_WANTED: Final = frozenset(
    {
        _TAG_DIRECTORY_RECORDS,
        _TAG_SOP_CLASS,
        _TAG_SOP_INSTANCE,
        _TAG_MODALITY,
        _TAG_STUDY_UID,
        _TAG_SERIES_UID,
    }
)

_EXECUTABLE_SIGNATURES: Final = (
    (b"MZ", "a PE/DOS executable (MZ)"),
    (b"\x7fELF", "an ELF executable"),
    (b"\xfe\xed\xfa\xce", "a Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xca\xfe\xba\xbe", "a Mach-O universal binary"),
    (b"\xbe\xba\xfe\xca", "a Mach-O universal binary"),
    (b"#!", "a script (#!)"),
)

_UID_RE: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


# --------------------------------------------------------------------------------------
# inspect_file
# --------------------------------------------------------------------------------------


def _check_preamble(preamble: bytes) -> Literal["zero", "nonzero"]:
    for signature, what in _EXECUTABLE_SIGNATURES:
        if preamble.startswith(signature):
            raise DicomRejected(
                PREAMBLE_EXECUTABLE,
                f"The 128-byte preamble starts with the signature of {what}.",
            )
    return "zero" if preamble.count(0) == len(preamble) else "nonzero"


def _plausible_dataset_start(head: bytes, size: int) -> bool:
    """Whether a file without 'DICM' at offset 128 starts like a raw data set: a first
    element in group 0002, 0004 or 0008 (either byte order) with a valid VR or a
    plausible implicit-VR length."""
    if len(head) < 8:
        return False
    for u16, u32 in ((_LE_U16, _LE_U32), (_BE_U16, _BE_U32)):
        group = u16.unpack_from(head, 0)[0]
        if group not in (0x0002, 0x0004, 0x0008):
            continue
        if head[4:6] in _VR_ALL:
            return True
        length = u32.unpack_from(head, 4)[0]
        if u16 is _LE_U16 and (length == _UNDEFINED or length <= size - 8):
            return True
    return False


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    text = text.rstrip("\x00 ").strip()
    return text or None


def _valid_uid(value: bytes | None) -> str | None:
    text = _text(value)
    if text is None or len(text) > 64 or not _UID_RE.fullmatch(text):
        return None
    return text


_UID_NAMES: Final = (
    (_TAG_STUDY_UID, "StudyInstanceUID (0020,000D)"),
    (_TAG_SERIES_UID, "SeriesInstanceUID (0020,000E)"),
    (_TAG_SOP_INSTANCE, "SOPInstanceUID (0008,0018)"),
    (_TAG_SOP_CLASS, "SOPClassUID (0008,0016)"),
)


@dataclass
class _Parsed:
    preamble: Literal["zero", "absent", "nonzero"]
    meta: _Walk
    transfer_syntax: str | None
    implicit: bool
    little_endian: bool
    dataset: _Walk
    prefix: bytes | None = None


def _parse(
    path: Path,
    limits: DicomLimits,
    *,
    stop: int | None = None,
    prefix_limit: int = 0,
    refuse_executable_preamble: bool = True,
    first_read: int = _READ_CHUNK,
) -> _Parsed:
    """Sniff, read the file meta, and walk the data set of ``path``.

    With ``stop``, the data set walk ends at the first top-level tag greater than
    ``stop`` and, if ``prefix_limit`` is set, the bytes of the data set up to there are
    returned (inflated for a deflated transfer syntax). ``first_read``: the bytes read
    first (a reader that stops early needs only the header: a smaller read is several
    times cheaper; more is read when the walk goes beyond it).
    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(first_read)
        src: _Source = _FileSource(f, size, head)

        preamble: Literal["zero", "absent", "nonzero"]
        if len(head) >= 132 and head[128:132] == b"DICM":
            if refuse_executable_preamble:
                preamble = _check_preamble(head[:128])
            else:
                preamble = "zero" if head[:128].count(0) == 128 else "nonzero"
            pos = 132
        elif _plausible_dataset_start(head, size):
            preamble = "absent"
            pos = 0
        else:
            raise DicomRejected(
                NOT_DICOM,
                "Not a DICOM file: no 'DICM' prefix at byte 128 and the file does not "
                "start like a DICOM data set.",
            )

        # File meta information: group 0002, explicit VR little endian.
        meta = _Walk(end=pos)
        o = src.ensure(pos, 2)
        if o >= 0 and _LE_U16.unpack_from(src.buf, o)[0] == 2:
            meta = _walk(
                src,
                pos,
                implicit=False,
                little_endian=True,
                limits=limits,
                wanted=_META_WANTED,
                meta=True,
            )
        pos = meta.end
        ts = _valid_uid(meta.values.get(_TAG_TRANSFER_SYNTAX))
        if _TAG_TRANSFER_SYNTAX in meta.values and ts is None:
            raise _invalid("The transfer syntax UID (0002,0010) is not a valid UID.")

        implicit, little_endian = False, True
        if ts is None:
            # No transfer syntax: guess like pydicom from the first element.
            o = src.ensure(pos, 6) if pos + 6 <= size else -1
            if o >= 0:
                group = _LE_U16.unpack_from(src.buf, o)[0]
                if src.buf[o + 4 : o + 6] in _VR_ALL:
                    little_endian = group < 1024
                else:
                    implicit = True
        elif ts == IMPLICIT_VR_LE:
            implicit = True
        elif ts == EXPLICIT_VR_BE:
            little_endian = False

        if ts == DEFLATED_EXPLICIT_VR_LE:
            src = _InflateSource(f, pos, size, limits)
            pos = 0

        dataset = _walk(
            src,
            pos,
            implicit=implicit,
            little_endian=little_endian,
            limits=limits,
            wanted=_DATASET_WANTED,
            stop=stop,
        )
        if isinstance(src, _InflateSource) and stop is None and not src.complete:
            raise DicomRejected(TRUNCATED, "The deflated data set ends prematurely.")

        prefix: bytes | None = None
        if prefix_limit and dataset.end - pos <= prefix_limit:
            if isinstance(src, _InflateSource):
                # re-inflate the start (forward-only source)
                src = _InflateSource(f, meta.end, size, limits)
            prefix = src.read(pos, dataset.end - pos)

    return _Parsed(
        preamble=preamble,
        meta=meta,
        transfer_syntax=ts,
        implicit=dataset.implicit,
        little_endian=little_endian,
        dataset=dataset,
        prefix=prefix,
    )


def inspect_file(path: Path, limits: DicomLimits = DicomLimits()) -> DicomSummary:
    """Validate one file and summarise it. Synchronous, runs in the current process.

    Reads only element headers and a few small values: memory use does not depend on the
    file size. Raises :class:`DicomRejected`; ``OSError`` if the file cannot be read.
    """
    try:
        parsed = _parse(path, limits)
    except RecursionError as exc:  # pragma: no cover - the walk is iterative
        raise DicomRejected(TOO_DEEP, "The file is nested too deeply to parse.") from exc
    except MemoryError as exc:
        raise DicomRejected(
            RESOURCE_LIMIT, "Inspecting the file exceeded the memory limit."
        ) from exc

    meta = parsed.meta.values
    values = parsed.dataset.values
    media_class = _valid_uid(meta.get(_TAG_MEDIA_SOP_CLASS))
    if media_class == MEDIA_STORAGE_DIRECTORY or _TAG_DIRECTORY_RECORDS in parsed.dataset.seen:
        return DicomSummary(
            kind="dicomdir",
            study_instance_uid=None,
            series_instance_uid=None,
            sop_instance_uid=_valid_uid(meta.get(_TAG_MEDIA_SOP_INSTANCE)),
            sop_class_uid=MEDIA_STORAGE_DIRECTORY,
            transfer_syntax_uid=parsed.transfer_syntax,
            modality=None,
            preamble=parsed.preamble,
        )

    uids: dict[int, str] = {}
    for tag, name in _UID_NAMES:
        if tag not in parsed.dataset.seen:
            raise DicomRejected(MISSING_UID, f"The instance has no {name}.")
        uid = _valid_uid(values.get(tag))
        if uid is None:
            raise DicomRejected(MISSING_UID, f"The {name} of the instance is empty or invalid.")
        uids[tag] = uid
    modality = _text(values.get(_TAG_MODALITY))
    _confirm_with_pydicom(path)
    return DicomSummary(
        kind="instance",
        study_instance_uid=uids[_TAG_STUDY_UID],
        series_instance_uid=uids[_TAG_SERIES_UID],
        sop_instance_uid=uids[_TAG_SOP_INSTANCE],
        sop_class_uid=uids[_TAG_SOP_CLASS],
        transfer_syntax_uid=parsed.transfer_syntax,
        modality=modality[:16] if modality else None,
        preamble=parsed.preamble,
    )


def _confirm_with_pydicom(path: Path) -> None:
    """Second opinion from pydicom on a file the bounded walk accepted.

    The walk has already bounded what pydicom would meet (sequence depth, inflated size, no
    length past the end), so pydicom's recursive reader is safe here. It decodes every header
    value (pixel data is never read), which catches what a structural walk cannot: values that
    do not decode for their VR or character set, the same way a PACS's toolkit would fail.
    """
    import pydicom  # lazily: the workers import it once, before they say "ready"

    # No value warnings: pydicom would write the offending values (which may be patient data)
    # to its log.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        for element in dataset.iterall():
            _ = element.value
    except MemoryError as exc:
        raise DicomRejected(
            RESOURCE_LIMIT, "Inspecting the file exceeded the memory limit."
        ) from exc
    except Exception as exc:  # pydicom raises many types; any of them means "cannot decode"
        raise DicomRejected(
            INVALID, f"pydicom cannot decode the data set ({type(exc).__name__})."
        ) from None
