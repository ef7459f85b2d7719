"""DICOMweb on the wire for the PACS harness: the DICOM JSON tags of STOW-RS and QIDO-RS
answers, a part's DICOM UIDs, ``multipart/related`` bodies (encoding and incremental parsing),
and which requests are STOW-RS."""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydicom import dcmread

_UID_HEAD: Final = 1 << 20

# DICOM JSON tags (PS3.18 F.2) used by STOW-RS and QIDO-RS answers.
SOP_CLASS_UID: Final = "00080016"
SOP_INSTANCE_UID: Final = "00080018"
RETRIEVE_URL: Final = "00081190"
FAILED_SOP_SEQUENCE: Final = "00081198"
REFERENCED_SOP_SEQUENCE: Final = "00081199"
REFERENCED_SOP_CLASS_UID: Final = "00081150"
REFERENCED_SOP_INSTANCE_UID: Final = "00081155"
FAILURE_REASON: Final = "00081197"
STUDY_INSTANCE_UID: Final = "0020000D"
SERIES_INSTANCE_UID: Final = "0020000E"
NUMBER_OF_STUDY_RELATED_INSTANCES: Final = "00201208"

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class DicomUids:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None

    @property
    def complete(self) -> bool:
        return None not in (
            self.sop_class_uid,
            self.sop_instance_uid,
            self.study_instance_uid,
            self.series_instance_uid,
        )


def dicom_uids(data: bytes) -> DicomUids:
    """The UIDs in a Part-10 file or raw data set (``data`` may stop after the header).
    Every field is None when the bytes are not DICOM."""
    values: dict[str, str | None] = {}
    try:
        ds = dcmread(
            io.BytesIO(data),
            force=True,
            stop_before_pixels=True,
            specific_tags=[
                "SOPClassUID",
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
            ],
        )
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            value = ds.get(keyword)
            values[keyword] = str(value).strip("\0 ") or None if value is not None else None
    except Exception:
        values = {}
    return DicomUids(
        sop_class_uid=values.get("SOPClassUID"),
        sop_instance_uid=values.get("SOPInstanceUID"),
        study_instance_uid=values.get("StudyInstanceUID"),
        series_instance_uid=values.get("SeriesInstanceUID"),
    )


@dataclass
class PartInfo:
    """One part of a multipart body: its headers, size, SHA-256 and DICOM UIDs; ``data`` when
    the reader was asked to keep it."""

    headers: dict[str, str]
    size: int
    sha256: str
    uids: DicomUids
    data: bytes | None = None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def sop_instance_uid(self) -> str | None:
        return self.uids.sop_instance_uid


def encode_multipart(
    parts: Iterable[bytes],
    *,
    boundary: str | None = None,
    part_type: str = "application/dicom",
) -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type: one ``application/dicom`` part per instance."""
    boundary = boundary or f"relaypacs-{secrets.token_hex(12)}"
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        out += part
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return bytes(out), content_type


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"; boundary=x`` -> (mime, params)."""
    if not value:
        return "", {}
    mime, *rest = value.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, sep, val = item.partition("=")
        if sep:
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1]
            params[key.strip().lower()] = val
    return mime.strip().lower(), params


class _PartBuilder:
    def __init__(self, headers: dict[str, str], *, keep_data: bool) -> None:
        self.headers = headers
        self.size = 0
        self.sha = hashlib.sha256()
        self.head = bytearray()
        self.data: bytearray | None = bytearray() if keep_data else None

    def feed(self, data: bytes | bytearray) -> None:
        self.size += len(data)
        self.sha.update(data)
        if self.data is not None:
            self.data += data
        if len(self.head) < _UID_HEAD:
            self.head += data[: _UID_HEAD - len(self.head)]

    def finish(self) -> PartInfo:
        data = bytes(self.data) if self.data is not None else None
        return PartInfo(
            headers=self.headers,
            size=self.size,
            sha256=self.sha.hexdigest(),
            uids=dicom_uids(data if data is not None else bytes(self.head)),
            data=data,
        )


class MultipartReader:
    """Incremental ``multipart/related`` parser (RFC 2046): feed body bytes as they arrive;
    only the first MiB of each part is kept unless ``keep_data``."""

    def __init__(self, boundary: str, *, keep_data: bool = False) -> None:
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = bytearray(b"\r\n")  # so that a body starting with the delimiter matches
        self._state: Literal["preamble", "delimiter", "headers", "data", "done"] = "preamble"
        self._keep_data = keep_data
        self._part: _PartBuilder | None = None
        self.parts: list[PartInfo] = []

    @property
    def complete(self) -> bool:
        """Whether the closing delimiter was seen."""
        return self._state == "done"

    def feed(self, data: bytes) -> None:
        if self._state == "done":
            return
        self._buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        buf = self._buffer
        if self._state in ("preamble", "data"):
            index = buf.find(self._delimiter)
            if index < 0:
                keep = len(self._delimiter) - 1
                if len(buf) > keep:
                    if self._part is not None:
                        self._part.feed(buf[: len(buf) - keep])
                    del buf[: len(buf) - keep]
                return False
            if self._part is not None:
                self._part.feed(buf[:index])
                self.parts.append(self._part.finish())
                self._part = None
            del buf[: index + len(self._delimiter)]
            self._state = "delimiter"
            return True
        if self._state == "delimiter":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = "done"
                buf.clear()
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            del buf[: end + 2]  # transport padding and CRLF after the delimiter
            self._state = "headers"
            return True
        if self._state == "headers":
            if buf.startswith(b"\r\n"):
                raw, consumed = b"", 2
            else:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return False
                raw, consumed = bytes(buf[:end]), end + 4
            headers: dict[str, str] = {}
            for line in raw.decode("latin-1").split("\r\n"):
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            del buf[:consumed]
            self._part = _PartBuilder(headers, keep_data=self._keep_data)
            self._state = "data"
            return True
        return False


def parse_multipart(body: bytes, content_type: str, *, keep_data: bool = True) -> list[PartInfo]:
    """The parts of a whole ``multipart/related`` body."""
    _, params = parse_content_type(content_type)
    reader = MultipartReader(params.get("boundary", ""), keep_data=keep_data)
    reader.feed(body)
    return reader.parts


def stow_path(method: str, target: str) -> bool:
    """POST .../studies or POST .../studies/{uid} (STOW-RS)."""
    if method != "POST":
        return False
    segments = [s for s in urlsplit(target).path.split("/") if s]
    return bool(segments) and (
        segments[-1] == "studies" or (len(segments) >= 2 and segments[-2] == "studies")
    )
