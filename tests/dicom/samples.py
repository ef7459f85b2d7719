"""Small synthetic DICOM instances for the DICOM tests."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian

from relaypacs.devtools import synth, unusual


def small(*, preamble: bytes | None = None, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    return synth.make_instance(
        **unusual.new_uids(),
        rows=16,
        columns=16,
        preamble=preamble,
        transfer_syntax=transfer_syntax,
    )
