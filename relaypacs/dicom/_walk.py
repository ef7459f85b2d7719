"""The bounded element walk under :func:`relaypacs.dicom.inspect.inspect_file`.

Byte sources (random access over a file, forward-only over a deflate stream) and an iterative
walker over every data element, with the limits it enforces and the rejection it raises. Kept
apart from ``inspect.py`` because it is used on its own: the command-line client reads study
headers with it (relaypacs.client.dicomheader, relaypacs.dicom.header). Messages never contain
patient data: they name tags and byte offsets only.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from relaypacs.dicom._dictionary import SQ_TAGS, VR_ALL, VR_LONG, dictionary_vr

# --------------------------------------------------------------------------------------
# Per-file codes, limits, rejection: public (relaypacs.dicom.inspect re-exports them), defined
# here because the walk reads the limits and raises the rejection
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
    """Per file, wall time (enforced by :class:`relaypacs.dicom.pool.DicomValidator`)."""
    memory_bytes: int = 1 << 30
    """Address-space rlimit of each :class:`relaypacs.dicom.pool.DicomValidator` worker
    process."""


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

_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITER: Final = 0xFFFEE00D
_SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF

_MAX_CAPTURED_VALUE: Final = 1024
"""Values of wanted elements longer than this are not read (a UI is at most 64 bytes)."""

INFLATE_RATIO_MIN_BYTES: Final = 16 << 20
"""The inflate ratio limit applies once this much has been inflated: a small file that
deflates very well (a blank image) is not a bomb, and inflating 16 MiB costs nothing."""

_VR_ALL: Final = VR_ALL
_VR_LONG: Final = VR_LONG
_SQ_TAGS: Final = SQ_TAGS
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
