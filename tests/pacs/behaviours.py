"""How the fault PACS answers a request: a :class:`Behaviour`, built with :func:`ok`,
:func:`status`, :func:`failed`, :func:`slow`, :func:`hang` or :func:`drop`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Behaviour:
    """How :class:`FaultPacs` answers one request; build with :func:`ok`, :func:`status`,
    :func:`failed`, :func:`slow`, :func:`hang` or :func:`drop`."""

    kind: Literal["ok", "status", "failed", "slow", "hang", "drop"]
    code: int = 200
    reasons: tuple[tuple[str, int], ...] = ()
    omitted: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()
    seconds: float = 0.0
    trickle: bool = False
    then: Behaviour | None = None
    read_body: bool = True
    reset: bool = False
    body: bytes | None = None

    def describe(self) -> str:
        if self.kind == "status":
            return f"status({self.code})"
        if self.kind == "slow":
            return f"slow({self.seconds})"
        return self.kind


def ok(*, hidden: Iterable[str] = ()) -> Behaviour:
    """STOW-RS: store every instance, 200 with a ReferencedSOPSequence item for each (the
    standard's 202/400/409 for unparseable parts or a study mismatch). QIDO-RS: list what is
    stored, except ``hidden`` SOP Instance UIDs (a PACS that has not indexed them yet)."""
    return Behaviour("ok", hidden=frozenset(hidden))


def status(code: int, body: bytes | None = None) -> Behaviour:
    """Answer ``code`` (503, 500, 400, 409, 415, ...) and store nothing. The body is a DICOM
    JSON object without items unless given."""
    return Behaviour("status", code=code, body=body)


def failed(
    reasons: dict[str, int],
    *,
    omitted: Iterable[str] = (),
    http_status: int = 202,
) -> Behaviour:
    """STOW-RS: the instances in ``reasons`` (SOP Instance UID -> FailureReason: 0xA700,
    0xA900, 0xC000, 0x0110, ...) are not stored and are listed in FailedSOPSequence; the
    ``omitted`` ones are neither stored nor listed anywhere (what Orthanc 1.10 with DICOMweb
    1.7 does when storing an instance throws); all others are stored. Status ``http_status``
    (202 by the standard; Orthanc 1.10 answers 200)."""
    return Behaviour(
        "failed",
        code=http_status,
        reasons=tuple(reasons.items()),
        omitted=frozenset(omitted),
    )


def slow(seconds: float, *, trickle: bool = False, then: Behaviour | None = None) -> Behaviour:
    """Read the request, then answer ``then`` (default :func:`ok`) after ``seconds``; with
    ``trickle`` the status and headers go out at once and the body follows in up to 20 pieces
    spread evenly over ``seconds`` (the last one at the end)."""
    return Behaviour("slow", seconds=seconds, trickle=trickle, then=then or ok())


def hang(*, read_body: bool = True) -> Behaviour:
    """Never answer (until the server stops); with ``read_body=False`` not even read the
    request body, so a sender blocks once the socket buffers are full."""
    return Behaviour("hang", read_body=read_body)


def drop(*, read_body: bool = True, reset: bool = False) -> Behaviour:
    """Close the connection without answering: after reading the request body, or right after
    its headers with ``read_body=False``; with ``reset`` by a TCP RST instead of a FIN."""
    return Behaviour("drop", read_body=read_body, reset=reset)
