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

:class:`DicomValidator` runs :func:`inspect_file` in worker processes whose address space is
capped and whose calls have a wall-time limit, so that a hostile file cannot exhaust the
serving process. Nothing here knows about HTTP or the database; messages never contain
patient data (they describe what is wrong with the file, with tags and byte offsets only).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import logging
import os
import re
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

from relaypacs.dicom._dictionary import SQ_TAGS, VR_ALL, VR_LONG, dictionary_vr

logger = logging.getLogger(__name__)

__all__ = [
    "DicomLimits",
    "DicomRejected",
    "DicomSummary",
    "DicomValidator",
    "inspect_file",
]

# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------

NOT_DICOM: Final = "not_dicom"
PREAMBLE_EXECUTABLE: Final = "dicom_preamble_executable"
TRUNCATED: Final = "dicom_truncated"
MISSING_UID: Final = "dicom_missing_uid"
INFLATE_TOO_LARGE: Final = "dicom_inflate_too_large"
TOO_DEEP: Final = "dicom_too_deep"
INVALID: Final = "dicom_invalid"
RESOURCE_LIMIT: Final = "dicom_resource_limit"


@dataclass(frozen=True)
class DicomLimits:
    """Bounds applied to the inspection of one file."""

    max_inflated_bytes: int = 1 << 30
    """Deflated transfer syntax: refuse if the inflated data set exceeds this."""
    max_inflate_ratio: int = 200
    """... or if inflated/compressed exceeds this ratio (checked once more than
    :data:`INFLATE_RATIO_MIN_BYTES` have been inflated)."""
    max_sequence_depth: int = 16
    """Deeper nesting of sequences (SQ) is rejected."""
    timeout_seconds: float = 30.0
    """Per file, wall time (enforced by :class:`DicomValidator`)."""
    memory_bytes: int = 1 << 30
    """Address-space rlimit of each :class:`DicomValidator` worker process."""


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


class DicomRejected(Exception):
    """The file is refused; ``code`` is one of the per-file codes of the API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


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

_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITER: Final = 0xFFFEE00D
_SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF

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
_MAX_CAPTURED_VALUE: Final = 1024
"""Values of wanted elements longer than this are not read (a UI is at most 64 bytes)."""

INFLATE_RATIO_MIN_BYTES: Final = 16 << 20
"""The inflate ratio limit applies once this much has been inflated: a small file that
deflates very well (a blank image) is not a bomb, and inflating 16 MiB costs nothing."""

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

_VR_ALL: Final = VR_ALL
_VR_LONG: Final = VR_LONG
_SQ_TAGS: Final = SQ_TAGS
_UID_RE: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

_LE_TAG_LEN: Final = struct.Struct("<HHI")
_BE_TAG_LEN: Final = struct.Struct(">HHI")
_LE_TAG: Final = struct.Struct("<HH")
_BE_TAG: Final = struct.Struct(">HH")
_LE_U16: Final = struct.Struct("<H")
_BE_U16: Final = struct.Struct(">H")
_LE_U32: Final = struct.Struct("<I")
_BE_U32: Final = struct.Struct(">I")

_READ_CHUNK: Final = 64 << 10
_INFLATE_IN_CHUNK: Final = 64 << 10
_INFLATE_OUT_CHUNK: Final = 256 << 10


def _undefined_length_is_sequence(tag: int) -> bool | None:
    """For an implicit VR element of undefined length: whether the dictionary says it is
    a sequence, or None for a tag unknown to the dictionary (private)."""
    vr = dictionary_vr(tag)
    return None if vr is None else vr == "SQ"


def _rejected_truncated(pos: int) -> DicomRejected:
    return DicomRejected(
        TRUNCATED, f"The file ends before the data element at byte offset {pos} is complete."
    )


def _invalid(message: str) -> DicomRejected:
    return DicomRejected(INVALID, message)


def _fmt_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# --------------------------------------------------------------------------------------
# Byte sources: random access over the file, forward-only over a deflate stream
# --------------------------------------------------------------------------------------


class _Source:
    """Bytes addressed by absolute offset, kept in a small window ``buf`` starting at
    ``start``. ``size`` is the total size when it is known in advance."""

    buf: bytes
    start: int
    size: int | None

    def ensure(self, pos: int, n: int) -> int:
        """Make ``buf`` cover ``[pos, pos + n)`` and return the index of ``pos`` in it.

        Returns -1 if ``pos`` is exactly the end of the data. Raises ``dicom_truncated`` if
        the data ends after ``pos`` but before ``pos + n``, or before ``pos``.
        """
        raise NotImplementedError

    def read(self, pos: int, n: int) -> bytes:
        if n == 0:
            return b""
        o = self.ensure(pos, n)
        if o < 0:
            raise _rejected_truncated(pos)
        return self.buf[o : o + n]


class _FileSource(_Source):
    def __init__(self, f: BinaryIO, size: int, head: bytes) -> None:
        self._f = f
        self.size = size
        self.buf = head
        self.start = 0

    def ensure(self, pos: int, n: int) -> int:
        o = pos - self.start
        if o >= 0 and o + n <= len(self.buf):
            return o
        size = self.size
        assert size is not None
        if pos == size:
            return -1
        if pos + n > size:
            raise _rejected_truncated(pos)
        self._f.seek(pos)
        self.buf = self._f.read(max(n, _READ_CHUNK))
        self.start = pos
        if len(self.buf) < n:  # the file shrank under us
            raise _rejected_truncated(pos)
        return 0


class _InflateSource(_Source):
    """The inflated data set of a deflated transfer syntax, inflated incrementally.

    Offsets are offsets in the inflated stream. Only forward access is possible; memory
    is bounded by the output chunk size whatever the declared lengths.
    """

    def __init__(self, f: BinaryIO, offset: int, file_size: int, limits: DicomLimits) -> None:
        self._f = f
        f.seek(offset)
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        self._limits = limits
        self._compressed_total = file_size - offset
        self._fed = 0
        self._inflated = 0
        self._input_done = False
        self.size = None
        self.buf = b""
        self.start = 0

    @property
    def complete(self) -> bool:
        """True once the deflate stream has ended properly."""
        return self._d.eof

    def _inflate_chunk(self, max_length: int) -> bytes:
        """Return the next inflated bytes (b"" at the end of the stream)."""
        d = self._d
        while True:
            if d.eof:
                return b""
            data = d.unconsumed_tail
            if not data:
                if self._input_done:
                    return b""
                data = self._f.read(_INFLATE_IN_CHUNK)
                if not data:
                    self._input_done = True
                    return b""
                self._fed += len(data)
            try:
                out = d.decompress(data, max_length)
            except zlib.error as exc:
                raise _invalid(
                    "The deflated data set is not a valid deflate stream "
                    f"(at compressed byte {self._fed})."
                ) from exc
            if out:
                self._inflated += len(out)
                self._check_limits()
                return out

    def _check_limits(self) -> None:
        limits = self._limits
        if self._inflated > limits.max_inflated_bytes:
            raise DicomRejected(
                INFLATE_TOO_LARGE,
                f"The deflated data set inflates to more than {limits.max_inflated_bytes} bytes.",
            )
        if self._inflated > INFLATE_RATIO_MIN_BYTES:
            consumed = max(1, self._fed - len(self._d.unconsumed_tail))
            if self._inflated > limits.max_inflate_ratio * consumed:
                raise DicomRejected(
                    INFLATE_TOO_LARGE,
                    "The deflated data set inflates more than "
                    f"{limits.max_inflate_ratio} times its compressed size "
                    "(decompression bomb).",
                )

    def ensure(self, pos: int, n: int) -> int:
        o = pos - self.start
        if o >= 0 and o + n <= len(self.buf):
            return o
        if o < 0:  # pragma: no cover - the walker only moves forward
            raise AssertionError("backward access to a deflate stream")
        end = self.start + len(self.buf)
        if pos >= end:
            # skip forward, inflating and discarding
            self.buf = b""
            self.start = end
            while end < pos:
                out = self._inflate_chunk(min(_INFLATE_OUT_CHUNK, pos - end))
                if not out:
                    raise _rejected_truncated(pos)
                end += len(out)
                self.start = end
            # the last chunk never overshoots pos (max_length)
            self.buf = b""
            self.start = pos
        else:
            self.buf = self.buf[o:]
            self.start = pos
        parts = [self.buf]
        have = len(self.buf)
        while have < n:
            out = self._inflate_chunk(_INFLATE_OUT_CHUNK)
            if not out:
                break
            parts.append(out)
            have += len(out)
        self.buf = b"".join(parts)
        if have == 0:
            return -1
        if have < n:
            raise _rejected_truncated(pos)
        return 0


# --------------------------------------------------------------------------------------
# The element walker
# --------------------------------------------------------------------------------------

_K_TOP: Final = 0
_K_ITEM: Final = 1
_K_SQ: Final = 2
_K_FRAGMENTS: Final = 3


@dataclass
class _Walk:
    """Result of walking one data set."""

    end: int
    """Offset where the walk stopped (end of data, or the first element not taken)."""
    values: dict[int, bytes] = field(default_factory=dict)
    """Values of the wanted top-level elements (not read if longer than 1 KiB)."""
    seen: set[int] = field(default_factory=set)
    """Wanted top-level tags present, whatever their length."""
    elements: int = 0
    """Number of top-level elements."""
    stopped_at: int | None = None
    """Tag of the element the walk stopped at, if it stopped before the end."""
    implicit: bool = False
    """Whether the top level was read as implicit VR (from its first element)."""


def _looks_implicit(vr0: int, vr1: int) -> bool:
    """pydicom's test: an explicit VR is two upper-case ASCII letters."""
    return not (0x40 < vr0 < 0x5B and 0x40 < vr1 < 0x5B)


def _walk(
    src: _Source,
    pos: int,
    *,
    implicit: bool,
    little_endian: bool,
    limits: DicomLimits,
    wanted: frozenset[int],
    stop: int | None = None,
    meta: bool = False,
) -> _Walk:
    """Walk the data set starting at ``pos`` until the end of the data.

    Every element's declared length is checked against its parent (item or sequence of
    defined length) and against the end of the data; sequences are descended
    iteratively, their depth is bounded. With ``meta``, stops at the first element that
    is not in group 0002. With ``stop``, stops at the first top-level element whose tag is
    greater (used to read only the start of a header).
    """
    tag_len = _LE_TAG_LEN if little_endian else _BE_TAG_LEN
    tag_only = _LE_TAG if little_endian else _BE_TAG
    u16 = _LE_U16 if little_endian else _BE_U16
    u32 = _LE_U32 if little_endian else _BE_U32
    size = src.size
    max_depth = limits.max_sequence_depth
    result = _Walk(end=pos)
    values = result.values
    seen = result.seen

    # Top-level heuristic of pydicom: the first element tells explicit from implicit VR.
    o = src.ensure(pos, 6) if size is None or pos + 6 <= size else -1
    if o >= 0:
        implicit = _looks_implicit(src.buf[o + 4], src.buf[o + 5])
    result.implicit = implicit

    # frames: [kind, end offset or -1 when undefined, implicit VR]
    stack: list[tuple[int, int, bool]] = [(_K_TOP, -1, implicit)]
    depth = 0
    elements = 0
    while True:
        kind, end, implicit = stack[-1]
        if end >= 0 and pos >= end:
            if pos > end:  # pragma: no cover - lengths are checked before descending
                raise _invalid(f"A data element overruns its parent at byte offset {end}.")
            stack.pop()
            if kind == _K_SQ:
                depth -= 1
            continue

        if kind == _K_FRAGMENTS:
            # Encapsulated data of undefined length: items of defined length, then a
            # sequence delimiter. Tight loop: there can be many fragments.
            while True:
                o = src.ensure(pos, 8)
                if o < 0:
                    raise _rejected_truncated(pos)
                g, e, length = tag_len.unpack_from(src.buf, o)
                tag = g << 16 | e
                if tag == _ITEM and length != _UNDEFINED:
                    pos += 8 + length
                    if size is not None and pos > size:
                        raise _rejected_truncated(pos - length - 8)
                elif tag == _SEQUENCE_DELIMITER:
                    pos += 8
                    stack.pop()
                    break
                else:
                    raise _invalid(
                        f"Encapsulated data contains {_fmt_tag(tag)} at byte offset {pos} "
                        "where an item or a sequence delimiter is expected."
                    )
            continue

        if kind == _K_SQ:
            o = src.ensure(pos, 8)
            if o < 0:
                raise _rejected_truncated(pos)
            if end >= 0 and pos + 8 > end:
                raise _invalid(f"A sequence item header overruns its sequence at offset {pos}.")
            g, e, length = tag_len.unpack_from(src.buf, o)
            tag = g << 16 | e
            if tag == _ITEM:
                pos += 8
                if length == _UNDEFINED:
                    item_end = -1
                else:
                    item_end = pos + length
                    if size is not None and item_end > size:
                        raise _rejected_truncated(pos - 8)
                    if end >= 0 and item_end > end:
                        raise _invalid(
                            f"A sequence item at byte offset {pos - 8} is longer than its sequence."
                        )
                item_implicit = implicit
                # pydicom: items of an explicit data set may be implicit VR
                if not implicit and (item_end < 0 or item_end - pos >= 6):
                    o = src.ensure(pos, 6)
                    if o >= 0:
                        item_implicit = _looks_implicit(src.buf[o + 4], src.buf[o + 5])
                stack.append((_K_ITEM, item_end, item_implicit))
            elif tag == _SEQUENCE_DELIMITER and end < 0:
                pos += 8
                stack.pop()
                depth -= 1
            else:
                raise _invalid(
                    f"A sequence contains {_fmt_tag(tag)} at byte offset {pos} where an "
                    "item is expected."
                )
            continue

        # A data set: the top level or a sequence item.
        if kind == _K_TOP and size is not None and 0 < size - pos < 8:
            # Fewer bytes than an element header: zero padding (tolerated, as pydicom
            # does) or the start of an element cut short.
            if src.read(pos, size - pos).strip(b"\x00"):
                raise _rejected_truncated(pos)
            result.end = size
            result.elements = elements
            return result
        o = src.ensure(pos, 8)
        if o < 0:
            if kind == _K_TOP:
                result.end = pos
                result.elements = elements
                return result
            raise _rejected_truncated(pos)
        buf = src.buf
        g, e, length = tag_len.unpack_from(buf, o)
        tag = g << 16 | e
        top = kind == _K_TOP
        if top:
            if (meta and g != 2) or (stop is not None and tag > stop):
                result.end = pos
                result.elements = elements
                result.stopped_at = tag
                return result
            elements += 1
        if g == 0xFFFE:
            if tag == _ITEM_DELIMITER and kind == _K_ITEM and end < 0:
                pos += 8
                stack.pop()
                continue
            raise _invalid(f"Unexpected delimiter {_fmt_tag(tag)} at byte offset {pos}.")
        vr: bytes | None
        if implicit:
            vr = None
            header = 8
        else:
            vr = buf[o + 4 : o + 6]
            if vr in _VR_LONG:
                o = src.ensure(pos, 12)
                if o < 0:
                    raise _rejected_truncated(pos)
                length = u32.unpack_from(src.buf, o + 8)[0]
                header = 12
            elif vr in _VR_ALL or b"AA" <= vr <= b"ZZ":
                length = u16.unpack_from(buf, o + 6)[0]
                header = 8
            else:
                # pydicom: an invalid VR means this element is implicit VR
                vr = None
                header = 8
        value_pos = pos + header
        if end >= 0 and value_pos > end:
            raise _invalid(f"A data element header overruns its item at byte offset {pos}.")

        if length == _UNDEFINED:
            if top and tag in wanted:
                seen.add(tag)
            if vr == b"SQ" or vr == b"UN":
                is_sequence = True
            elif vr is None:
                known = _undefined_length_is_sequence(tag)
                if known is None:  # unknown (private) tag: a sequence if it holds items
                    o = src.ensure(value_pos, 4)
                    known = o >= 0 and tag_only.unpack_from(src.buf, o) == (0xFFFE, 0xE000)
                is_sequence = known
            else:
                is_sequence = False
            pos = value_pos
            if is_sequence:
                depth += 1
                if depth > max_depth:
                    raise DicomRejected(
                        TOO_DEEP,
                        f"Sequences are nested deeper than {max_depth} levels "
                        f"(at byte offset {pos}).",
                    )
                stack.append((_K_SQ, -1, implicit))
            else:
                stack.append((_K_FRAGMENTS, -1, implicit))
            continue

        value_end = value_pos + length
        if size is not None and value_end > size:
            raise DicomRejected(
                TRUNCATED,
                f"The file ends before the end of data element {_fmt_tag(tag)} "
                f"(declared length {length} at byte offset {pos}, file size {size}).",
            )
        if end >= 0 and value_end > end:
            raise _invalid(
                f"Data element {_fmt_tag(tag)} at byte offset {pos} is longer than its item."
            )
        if top and tag in wanted:
            seen.add(tag)
            if length <= _MAX_CAPTURED_VALUE:
                values[tag] = src.read(value_pos, length)
        if length and (vr == b"SQ" or (vr is None and tag in _SQ_TAGS)):
            depth += 1
            if depth > max_depth:
                raise DicomRejected(
                    TOO_DEEP,
                    f"Sequences are nested deeper than {max_depth} levels "
                    f"(at byte offset {value_pos}).",
                )
            stack.append((_K_SQ, value_end, implicit))
            pos = value_pos
        else:
            pos = value_end


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


# --------------------------------------------------------------------------------------
# DicomValidator: inspect_file in capped worker processes
# --------------------------------------------------------------------------------------

_WORKER_START_TIMEOUT: Final = 60.0
_WORKER_STOP_TIMEOUT: Final = 5.0
_WORKER_MODULE: Final = "relaypacs.dicom._worker"
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])
"""Put on the workers' PYTHONPATH, so that they import this very code."""


class _WorkerDied(Exception):
    pass


class _Worker:
    """One worker process, speaking JSON lines on its stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, message: object) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise _WorkerDied from exc

    async def receive(self) -> Any:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            line = await stdout.readline()
        except (ConnectionError, ValueError) as exc:
            raise _WorkerDied from exc
        if not line:
            raise _WorkerDied
        try:
            return json.loads(line)
        except ValueError as exc:  # not the protocol: treat the worker as broken
            raise _WorkerDied from exc

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        """Ask the worker to exit (EOF on its stdin), kill it if it does not."""
        stdin = self.process.stdin
        if stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                stdin.close()
        try:
            async with asyncio.timeout(_WORKER_STOP_TIMEOUT):
                await self.process.wait()
        except TimeoutError:
            await self.kill()


def _worker_error(kind: str, errno: int | None, message: str) -> Exception:
    error_type = getattr(builtins, kind, None)
    if isinstance(error_type, type) and issubclass(error_type, OSError):
        return error_type(errno, message) if errno is not None else error_type(message)
    return RuntimeError(f"DICOM validation worker failed: {kind}: {message}")


def _decode(reply: dict[str, Any]) -> tuple[DicomSummary | Exception, bool]:
    """A worker's answer for one file: the summary or the exception to raise (DicomRejected,
    an OSError, RuntimeError), and whether the worker may be used again."""
    if "ok" in reply:
        return DicomSummary(**reply["ok"]), True
    if "rejected" in reply:
        code, message = reply["rejected"]
        return DicomRejected(code, message), code != RESOURCE_LIMIT  # recycle after MemoryError
    kind, errno, message = reply["error"]
    return _worker_error(kind, errno, message), True


@dataclass
class _Lease:
    worker: _Worker
    healthy: bool = False


class DicomValidator:
    """Runs :func:`inspect_file` in a pool of worker processes.

    Each worker is a separate Python process (``python -m relaypacs.dicom._worker``:
    nothing of the serving process is inherited or re-imported) whose address space is
    capped with ``setrlimit(RLIMIT_AS, memory_bytes)``; each call has a wall-time limit
    (``timeout_seconds``). So a hostile file can never exhaust the serving process. A
    worker that dies, runs out of memory or times out is killed and replaced -- only that
    one: files being inspected by the other workers are not affected -- and its file gets
    ``DicomRejected("dicom_resource_limit", ...)``.

    Workers start on first use (or with :meth:`start`). At most ``workers`` files are
    inspected at once; further calls wait for a free worker. With ``idle_seconds``, workers
    that have had nothing to do for that long are stopped (they hold ~60 MiB each) and start
    again on the next file.
    """

    def __init__(
        self,
        limits: DicomLimits = DicomLimits(),
        workers: int = 2,
        *,
        idle_seconds: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.limits = limits
        self._size = workers
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        self._idle_seconds = idle_seconds
        self._last_used = time.monotonic()
        self._reaper: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None

    @property
    def worker_count(self) -> int:
        return len(self._all)

    def _ensure_reaper(self) -> None:
        if self._idle_seconds is not None and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.create_task(self._reap())

    async def _reap(self) -> None:
        assert self._idle_seconds is not None
        while not self._closed:
            await asyncio.sleep(self._idle_seconds / 2)
            unused = time.monotonic() - self._last_used
            if unused >= self._idle_seconds and len(self._idle) == len(self._all):
                idle, self._idle = self._idle, []
                for worker in idle:
                    self._all.discard(worker)
                await asyncio.gather(*(worker.stop() for worker in idle))
                return  # the next inspection starts workers and this task again

    async def release_idle(self) -> int:
        """Stop the workers now if none is inspecting a file (they start again on the next
        one); returns how many were stopped."""
        if len(self._idle) != len(self._all):
            return 0
        idle, self._idle = self._idle, []
        for worker in idle:
            self._all.discard(worker)
        await asyncio.gather(*(worker.stop() for worker in idle))
        return len(idle)

    def warm(self) -> None:
        """Start one worker in the background if none is running (a study is likely to come:
        an uploader signed in), so that the first file does not wait for its start-up (~0.3 s
        of CPU, mostly importing pydicom). It stops again after `idle_seconds` unused."""
        if self._closed or self._all or (self._warming is not None and not self._warming.done()):
            return
        self._last_used = time.monotonic()
        self._warming = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            worker = await self._start_worker()
        except Exception as exc:  # the first inspection starts one and reports the failure
            logger.warning("could not start a DICOM validation worker ahead of time: %s", exc)
            return
        if self._closed:
            await self._discard(worker)
            return
        self._idle.append(worker)
        self._ensure_reaper()

    async def start(self) -> None:
        """Start all workers now rather than on first use (optional)."""
        self._check_open()
        self._last_used = time.monotonic()
        self._ensure_reaper()
        missing = self._size - len(self._all)
        if missing > 0:
            started = await asyncio.gather(*(self._start_worker() for _ in range(missing)))
            self._idle.extend(started)

    @contextlib.asynccontextmanager
    async def _lease(self, message: str | list[str]) -> AsyncIterator[_Lease]:
        """A worker that has been sent ``message``, for one answer; afterwards it is kept if
        the caller marked the lease healthy, else replaced. At most ``workers`` at once."""
        self._check_open()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        self._last_used = time.monotonic()
        self._ensure_reaper()
        async with self._slots:
            lease = _Lease(await self._acquire(message))
            try:
                yield lease
            finally:
                self._last_used = time.monotonic()
                if lease.healthy and not self._closed:
                    self._idle.append(lease.worker)
                else:
                    await self._discard(lease.worker)

    async def inspect(self, path: Path) -> DicomSummary:
        """Inspect ``path`` in a worker. Raises :class:`DicomRejected`; re-raises
        ``OSError`` from the worker (e.g. ``FileNotFoundError``)."""
        async with self._lease(os.fspath(path)) as lease:
            try:
                async with asyncio.timeout(self.limits.timeout_seconds):
                    reply = await lease.worker.receive()
                result, lease.healthy = _decode(reply)
                if isinstance(result, Exception):
                    raise result
                return result
            except TimeoutError:
                raise DicomRejected(
                    RESOURCE_LIMIT,
                    f"Inspecting the file took longer than {self.limits.timeout_seconds} s.",
                ) from None
            except _WorkerDied:
                if self._closed:  # killed by close(): not the file's fault
                    raise RuntimeError("DicomValidator was closed during the inspection") from None
                raise DicomRejected(
                    RESOURCE_LIMIT,
                    "The validation worker died while inspecting the file "
                    "(memory limit exceeded or crashed).",
                ) from None

    async def inspect_batch(
        self, paths: Sequence[Path]
    ) -> list[DicomSummary | DicomRejected | OSError | None]:
        """Inspect several files in one round trip to one worker: what :meth:`inspect` would
        return or raise for each, in order, or None where the batch cannot tell: a file that
        hit a resource limit (the worker is replaced; :meth:`inspect` on its own says more),
        or every file when the whole batch failed (it took longer than the limit for one
        file, or the worker died). For work that :meth:`inspect` checks again when there is
        no answer (relaypacs.uploads.early): the per-file round trip is most of the serving
        process's cost of a small file."""
        if not paths:
            self._check_open()
            return []
        async with self._lease([os.fspath(p) for p in paths]) as lease:
            try:
                async with asyncio.timeout(self.limits.timeout_seconds):
                    reply = await lease.worker.receive()
            except (TimeoutError, _WorkerDied):
                return [None] * len(paths)
            replies = reply.get("batch") if isinstance(reply, dict) else None
            if not isinstance(replies, list) or len(replies) != len(paths):
                return [None] * len(paths)  # not the protocol: the worker is replaced
            lease.healthy = True
            results: list[DicomSummary | DicomRejected | OSError | None] = []
            for one in replies:
                result, reusable = _decode(one)
                lease.healthy = lease.healthy and reusable
                if isinstance(result, DicomRejected) and result.code == RESOURCE_LIMIT:
                    results.append(None)
                elif isinstance(result, DicomSummary | DicomRejected | OSError):
                    results.append(result)
                else:  # the worker's own failure: inspect() raises it
                    results.append(None)
            return results

    async def close(self) -> None:
        """Stop all workers. The validator cannot be used afterwards."""
        self._closed = True
        for task in (self._reaper, self._warming):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        idle, self._idle = self._idle, []
        busy = self._all - set(idle)
        self._all.clear()
        await asyncio.gather(
            *(worker.stop() for worker in idle), *(worker.kill() for worker in busy)
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("DicomValidator is closed")

    async def _acquire(self, message: str | list[str]) -> _Worker:
        """A live worker that has been sent ``message``: a path, or a batch of paths."""
        if not self._idle and self._warming is not None and not self._warming.done():
            await asyncio.shield(self._warming)  # the worker being started is for this file
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                try:
                    await worker.send(message)
                except _WorkerDied:
                    pass
                else:
                    return worker
            await self._discard(worker)
        worker = await self._start_worker()
        try:
            await worker.send(message)
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _start_worker(self) -> _Worker:
        env = dict(os.environ)
        package_root = _PACKAGE_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            _WORKER_MODULE,
            json.dumps(dataclasses.asdict(self.limits)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = _Worker(process)
        self._all.add(worker)
        try:
            async with asyncio.timeout(_WORKER_START_TIMEOUT):
                hello = await worker.receive()
            if hello != "ready":
                raise _WorkerDied
        except (TimeoutError, _WorkerDied, ValueError) as exc:
            await self._discard(worker)
            raise RuntimeError(
                "A DICOM validation worker failed to start (is memory_bytes too small?)"
            ) from exc
        except BaseException:
            await self._discard(worker)
            raise
        return worker

    async def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        await worker.kill()
