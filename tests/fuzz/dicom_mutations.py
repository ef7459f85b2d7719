"""Hypothesis strategies that mutate real DICOM files (from relaypacs.devtools): truncation,
flipped bytes, corrupted or giant element lengths, a dropped preamble or file meta, nested
sequences spliced in; and mutations that keep a file valid (pixel values only)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache

from hypothesis import strategies as st
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from relaypacs.devtools import synth, unusual

# The codes a file's verdict may carry: the validator's (relaypacs.dicom), then the study's
# rules applied by `complete` (relaypacs.uploads.verify).
VALIDATOR_CODES = frozenset(
    {
        "not_dicom",
        "dicom_truncated",
        "dicom_invalid",
        "dicom_missing_uid",
        "dicom_preamble_executable",
        "dicom_inflate_too_large",
        "dicom_too_deep",
        "dicom_resource_limit",
    }
)
STUDY_CODES = frozenset({"study_uid_mismatch", "duplicate_sop_instance", "no_instances"})

_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    explicit_le: bool  # the data set is explicit VR little endian: its lengths can be found
    meta_end: int  # offset of the data set (after preamble, DICM and file meta), 0 if none


def _meta_end(data: bytes) -> int:
    if data[128:132] != b"DICM":
        return 0
    # (0002,0000) UL group length: its value is the length of the rest of the meta group.
    assert data[132:138] == b"\x02\x00\x00\x00UL"
    (group_length,) = struct.unpack_from("<I", data, 140)
    return 144 + int(group_length)


def _uids() -> unusual.Uids:
    return unusual.new_uids()


@cache
def seeds() -> tuple[Seed, ...]:
    """Valid files of several kinds: explicit and implicit VR, big endian, deflated,
    encapsulated (RLE), nested sequences, no preamble nor meta."""
    files = [
        ("explicit", synth.make_instance(**_uids(), rows=16, columns=16), True),
        ("explicit-larger", synth.make_instance(**_uids(), rows=64, columns=48, seed=3), True),
        (
            "implicit",
            synth.make_instance(
                **_uids(), rows=16, columns=16, transfer_syntax=ImplicitVRLittleEndian
            ),
            False,
        ),
        (
            "big-endian",
            synth.make_instance(
                **_uids(), rows=16, columns=16, transfer_syntax=ExplicitVRBigEndian
            ),
            False,
        ),
        (
            "deflated",
            synth.make_instance(
                **_uids(), rows=16, columns=16, transfer_syntax=DeflatedExplicitVRLittleEndian
            ),
            False,
        ),
        (
            "rle",
            synth.make_instance(**_uids(), rows=16, columns=16, transfer_syntax=RLELossless),
            True,
        ),
        ("nested-sequences", unusual.make_deep_nesting(depth=4), True),
        ("no-preamble", unusual.make_no_preamble(), False),
    ]
    return tuple(Seed(name, data, explicit, _meta_end(data)) for name, data, explicit in files)


def length_fields(seed: Seed) -> list[tuple[int, int]]:
    """(offset, width) of element length fields: the file meta's, and the data set's when it
    is explicit VR little endian (nested sequences and items included)."""
    data = seed.data
    found: list[tuple[int, int]] = []
    regions = [(132, seed.meta_end)] if seed.meta_end else []
    if seed.explicit_le and seed.meta_end:
        regions.append((seed.meta_end, len(data)))
    for start, end in regions:
        pos = start
        while pos + 8 <= end:
            group, _element = struct.unpack_from("<HH", data, pos)
            if group == 0xFFFE:  # item or delimiter: no VR; step into the item
                found.append((pos + 4, 4))
                pos += 8
                continue
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", data, pos + 8)
                found.append((pos + 8, 4))
                header = 12
            else:
                (length,) = struct.unpack_from("<H", data, pos + 6)
                found.append((pos + 6, 2))
                header = 8
            if vr == b"SQ" or length == 0xFFFFFFFF:
                pos += header  # step into the sequence (or encapsulated pixel data)
            else:
                pos += header + length
    return found


def pixel_value_span(seed: Seed) -> tuple[int, int] | None:
    """The byte range of native pixel values (explicit VR little endian only)."""
    if not seed.explicit_le:
        return None
    at = seed.data.rfind(b"\xe0\x7f\x10\x00OW")
    if at < 0:
        return None
    (length,) = struct.unpack_from("<I", seed.data, at + 8)
    if length in (0, 0xFFFFFFFF):
        return None
    return at + 12, at + 12 + length


_GIANT = [0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0x10000000, 1 << 31 | 1]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed with one to three mutations: (description, bytes)."""
    seed = draw(st.sampled_from(seeds()))
    data = bytearray(seed.data)
    steps: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(
                ["truncate", "flip", "length", "giant", "no_preamble", "no_meta", "nest", "zeros"]
            )
        )
        size = len(data)
        if size == 0:
            break
        if kind == "truncate":
            keep = draw(st.integers(0, size - 1))
            del data[keep:]
        elif kind == "flip":
            for _ in range(draw(st.integers(1, 8))):
                at = draw(st.integers(0, size - 1))
                data[at] ^= draw(st.integers(1, 255))
        elif kind in ("length", "giant"):
            fields = [f for f in length_fields(seed) if f[0] + f[1] <= size]
            if not fields:
                continue
            at, width = draw(st.sampled_from(fields))
            limit = (1 << (8 * width)) - 1
            if kind == "giant":
                value = limit if width == 2 else draw(st.sampled_from(_GIANT))
            else:
                value = draw(st.integers(0, limit))
            data[at : at + width] = value.to_bytes(width, "little")
        elif kind == "no_preamble":
            del data[: min(128, size)]
        elif kind == "no_meta" and seed.meta_end and size >= seed.meta_end:
            del data[: seed.meta_end]
        elif kind == "nest":
            depth = draw(st.sampled_from([1, 3, 15, 16, 17, 40, 300]))
            at = draw(st.integers(min(seed.meta_end, size), size))
            data[at:at] = unusual._nested_sequences(depth)
        elif kind == "zeros":
            at = draw(st.integers(0, size - 1))
            data[at : at + draw(st.integers(1, 64))] = bytes(min(64, size - at))
        steps.append(kind)
    return f"{seed.name}: {', '.join(steps) or 'none'}", bytes(data)


@st.composite
def still_valid(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed whose pixel values (only) were changed: it must stay accepted."""
    candidates = [s for s in seeds() if pixel_value_span(s) is not None]
    seed = draw(st.sampled_from(candidates))
    span = pixel_value_span(seed)
    assert span is not None
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 16))):
        at = draw(st.integers(span[0], span[1] - 1))
        data[at] ^= draw(st.integers(1, 255))
    return seed.name, bytes(data)
