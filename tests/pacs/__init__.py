"""PACS servers for tests: a real Orthanc, a recording reverse proxy and a fault-injecting PACS.

- :func:`run_orthanc` runs the Debian ``Orthanc`` binary with its DICOMweb plugin on a free
  127.0.0.1 port, with authentication and our own configuration (``scripts/orthanc.sh install``
  installs it). :class:`OrthancServer` stops, restarts, freezes and inspects it.
- :class:`RecordingProxy` sits in front of any HTTP server and forwards every request byte for
  byte (chunked bodies stay chunked) while it records what passed: method, path, status, body
  size and, for ``multipart/related`` bodies, one :class:`PartInfo` per part (size, SHA-256 and
  the part's DICOM UIDs), so a test can count STOW-RS requests and see which instances each
  carried.
- :class:`FaultPacs` is a small DICOMweb server (STOW-RS and QIDO-RS) whose answers a test
  scripts one request at a time: :func:`ok`, :func:`status`, :func:`failed`, :func:`slow`,
  :func:`hang`, :func:`drop`. It records every request with its arrival time.

The proxy and the fault PACS are asyncio servers on a loopback port chosen by the kernel, each
run by its own event loop in a daemon thread: synchronous and async tests use them alike.
Everything listens on 127.0.0.1 only (Orthanc through ``scripts/orthanc.sh``'s loopback shim:
Orthanc 1.10 has no option for its listening address).

Import from ``tests.pacs``. (This is the package's ``__init__`` rather than a ``tests/pacs.py``
module because a module and a package of the same name cannot both exist: the package, which
holds the harness tests, would hide the module.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
from pydicom import dcmread

from tests.servers import free_port

__all__ = [
    "DICOMWEB_PLUGIN",
    "FAILED_SOP_SEQUENCE",
    "FAILURE_REASON",
    "LOOPBACK_SHIM",
    "NUMBER_OF_STUDY_RELATED_INSTANCES",
    "ORTHANC_BIN",
    "REFERENCED_SOP_CLASS_UID",
    "REFERENCED_SOP_INSTANCE_UID",
    "REFERENCED_SOP_SEQUENCE",
    "RETRIEVE_URL",
    "SERIES_INSTANCE_UID",
    "SOP_CLASS_UID",
    "SOP_INSTANCE_UID",
    "STUDY_INSTANCE_UID",
    "Behaviour",
    "DicomUids",
    "FaultPacs",
    "MultipartReader",
    "OrthancServer",
    "OrthancStartError",
    "PacsRequest",
    "PartInfo",
    "ProxyRecord",
    "RecordingProxy",
    "StoredInstance",
    "dicom_uids",
    "drop",
    "encode_multipart",
    "failed",
    "hang",
    "ok",
    "orthanc_available",
    "orthanc_missing_reason",
    "parse_content_type",
    "parse_multipart",
    "run_orthanc",
    "slow",
    "status",
]

LOOPBACK: Final = "127.0.0.1"
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
ORTHANC_BIN: Final = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN: Final = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
LOOPBACK_SHIM: Final = REPO_ROOT / ".tools" / "orthanc" / "loopback-bind.so"
"""Built by ``scripts/orthanc.sh install``: makes Orthanc listen on 127.0.0.1, not 0.0.0.0."""

_HEAD_LIMIT: Final = 1 << 20
_READ_SIZE: Final = 1 << 16
_KEEP_RESPONSE: Final = 1 << 20
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


# ======================================================================================
# DICOM parts: UIDs, multipart/related encoding and incremental parsing
# ======================================================================================


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


# ======================================================================================
# Orthanc
# ======================================================================================


def orthanc_missing_reason() -> str | None:
    """Why Orthanc cannot run here, or None when it can."""
    missing = [
        str(path)
        for path in (ORTHANC_BIN, DICOMWEB_PLUGIN, LOOPBACK_SHIM)
        if not (path.is_file() and os.access(path, os.R_OK))
    ]
    if not missing:
        return None
    return (
        f"Orthanc is not installed ({', '.join(missing)} missing): run scripts/orthanc.sh install"
    )


def orthanc_available() -> bool:
    """Whether the Orthanc binary, its DICOMweb plugin and the loopback shim are installed."""
    return orthanc_missing_reason() is None


class OrthancStartError(RuntimeError):
    pass


@dataclass
class OrthancServer:
    """An Orthanc process with its own configuration, storage and log in ``work_dir``."""

    work_dir: Path
    port: int
    username: str
    password: str
    timeout: float = 10.0
    process: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    config_path: Path = field(init=False)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"

    # -- addresses ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def client(self, *, timeout: float | None = None) -> httpx.Client:
        """An httpx client on ``base_url`` with the credentials (close it, or use ``with``)."""
        return httpx.Client(base_url=self.base_url, auth=self.auth, timeout=timeout or self.timeout)

    # -- process -----------------------------------------------------------------------

    def write_config(self) -> None:
        settings: JsonDict = {
            "Name": f"relaypacs-test-{self.port}",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomServerEnabled": False,
            "OverwriteInstances": False,
            "StorageCompression": False,
            "SaveJobs": False,
            "HttpThreadsCount": 20,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        self.config_path.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        self.config_path.chmod(0o600)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start Orthanc (again) on the same port, storage and configuration; return once
        ``GET /system`` answers 200 with the credentials."""
        if self.running:
            raise RuntimeError("Orthanc is already running")
        reason = orthanc_missing_reason()
        if reason:
            raise OrthancStartError(reason)
        self.write_config()
        env = dict(os.environ)
        env["LD_PRELOAD"] = ":".join(p for p in (str(LOOPBACK_SHIM), env.get("LD_PRELOAD")) if p)
        # The port may still be held for an instant after a stop: try a few times.
        for attempt in range(5):
            with (self.work_dir / "orthanc.stderr").open("ab") as stderr:
                self.process = subprocess.Popen(
                    [str(ORTHANC_BIN), f"--logfile={self.log_path}", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=env,
                )
            self.frozen = False
            try:
                self._wait_ready()
                return
            except OrthancStartError:
                if self.process.poll() is None or attempt == 4:
                    self.kill()
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.timeout * 3
        with httpx.Client(auth=self.auth, timeout=1.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise OrthancStartError(
                        f"Orthanc exited with code {self.process.returncode} on port "
                        f"{self.port}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.base_url}/system").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise OrthancStartError(
                        f"Orthanc did not answer on port {self.port}:\n{self.log_tail()}"
                    )
                time.sleep(0.02)

    def stop(self) -> None:
        """Graceful stop (SIGTERM, wait; Orthanc 1.10 takes about 2.5 s). Data stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.thaw()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash (committed data survives; Orthanc's index is SQLite)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing is answered."""
        assert self.process is not None
        assert self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.frozen and self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def log_tail(self, chars: int = 4000) -> str:
        text = ""
        for path in (self.log_path, self.work_dir / "orthanc.stderr"):
            if path.exists():
                text += path.read_text(errors="replace")[-chars:]
        return text

    # -- inspection (Orthanc REST API and QIDO-RS) ----------------------------------------

    def _get(self, path: str, **params: str | int) -> httpx.Response:
        with self.client() as client:
            response = client.get(path, params=params)
        response.raise_for_status()
        return response

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        ids: list[str] = self._get("/instances").json()
        return ids

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file, as Orthanc returns it."""
        return self._get(f"/instances/{orthanc_id}/file").content

    def lookup_instance(self, sop_instance_uid: str) -> str | None:
        """The Orthanc identifier of the instance with this SOP Instance UID, if stored."""
        with self.client() as client:
            response = client.post("/tools/lookup", content=sop_instance_uid)
        response.raise_for_status()
        for match in response.json():
            if match.get("Type") == "Instance":
                found: str = match["ID"]
                return found
        return None

    def file_by_sop_uid(self, sop_instance_uid: str) -> bytes | None:
        orthanc_id = self.lookup_instance(sop_instance_uid)
        return None if orthanc_id is None else self.instance_file(orthanc_id)

    def sop_instance_uids(self, study_uid: str, *, page_size: int = 100) -> set[str]:
        """SOP Instance UIDs of the study as QIDO-RS lists them (paged with limit/offset)."""
        found: set[str] = set()
        offset = 0
        while True:
            page = self._get(
                f"/dicom-web/studies/{study_uid}/instances", limit=page_size, offset=offset
            ).json()
            for item in page:
                found.update(item.get(SOP_INSTANCE_UID, {}).get("Value", []))
            if len(page) < page_size:
                return found
            offset += page_size

    def delete_all(self) -> None:
        """Delete every patient (so every study, series and instance)."""
        with self.client() as client:
            response = client.get("/patients")
            response.raise_for_status()
            for patient in response.json():
                client.delete(f"/patients/{patient}").raise_for_status()


@contextlib.contextmanager
def run_orthanc(
    work_dir: Path,
    *,
    username: str = "relay",
    password: str | None = None,
    timeout: float = 10.0,
) -> Iterator[OrthancServer]:
    """Run Orthanc with the DICOMweb plugin on a free 127.0.0.1 port, storage under
    ``work_dir``; killed on exit. Raises (never skips) when Orthanc is not installed."""
    reason = orthanc_missing_reason()
    if reason:
        raise OrthancStartError(reason)
    work_dir.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_urlsafe(16)
    server: OrthancServer | None = None
    for attempt in range(3):  # free_port() is racy: another process may take the port
        server = OrthancServer(work_dir, free_port(), username, password, timeout=timeout)
        try:
            server.start()
            break
        except OrthancStartError:
            if attempt == 2:
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.kill()  # a graceful stop takes 2.5 s and the data is thrown away anyway


# ======================================================================================
# A minimal HTTP/1.1 layer on asyncio streams, and servers in background threads
# ======================================================================================


@dataclass
class _Head:
    start_line: str
    headers: list[tuple[str, str]]
    raw: bytes

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.get("transfer-encoding") or "").lower()

    @property
    def content_length(self) -> int | None:
        value = self.get("content-length")
        return int(value) if value is not None else None

    def wants_close(self) -> bool:
        connection = (self.get("connection") or "").lower()
        version = (
            self.start_line.split(" ", 1)[0]
            if self.start_line.startswith("HTTP/")
            else (self.start_line.rsplit(" ", 1)[-1])
        )
        if "close" in connection:
            return True
        return version == "HTTP/1.0" and "keep-alive" not in connection


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    """The start line and headers, or None on a clean end of stream."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            raise
        raw = raw.lstrip(b"\r\n")
        if raw:
            break
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return _Head(lines[0], headers, raw)


async def _iter_body(
    reader: asyncio.StreamReader, head: _Head, *, to_eof: bool = False
) -> AsyncIterator[tuple[bytes, bytes]]:
    """(bytes as on the wire, payload bytes) of a message body: chunked, Content-Length, or
    until the end of stream when ``to_eof`` (a response without framing)."""
    if head.chunked:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                trailer = bytearray(line)
                while True:
                    trailer_line = await reader.readuntil(b"\r\n")
                    trailer += trailer_line
                    if trailer_line == b"\r\n":
                        break
                yield bytes(trailer), b""
                return
            data = await reader.readexactly(size)
            crlf = await reader.readexactly(2)
            yield line + data + crlf, data
    length = head.content_length
    if length is not None:
        while length > 0:
            data = await reader.read(min(length, _READ_SIZE))
            if not data:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(data)
            yield data, data
        return
    if to_eof:
        while data := await reader.read(_READ_SIZE):
            yield data, data


def _response_has_body(method: str, status_code: int) -> bool:
    return not (method == "HEAD" or 100 <= status_code < 200 or status_code in (204, 304))


def _reason(code: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Status"


def _response_head(code: int, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {code} {_reason(code)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _BackgroundServer:
    """An asyncio TCP server on 127.0.0.1 (port chosen by the kernel: no race) run by an event
    loop in a daemon thread. Subclasses implement :meth:`handle` for one connection."""

    name = "server"

    def __init__(self) -> None:
        self.port = 0
        self.errors: list[BaseException] = []
        """Unexpected exceptions in connection handlers (a test may assert it stays empty)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Listen on a port the kernel chooses, or, after :meth:`stop`, on the same port again
        (what was recorded and stored is kept)."""
        if self._loop is not None:
            raise RuntimeError(f"{self.name} is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"{self.name}-{self.port}", daemon=True
        )
        self._thread.start()
        self._call(self._start(sock))

    async def _start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._connection, sock=sock, limit=_HEAD_LIMIT)

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 15.0) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Close the listener and every open connection (hanging requests included)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._call(_stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def _wait_sync(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# ======================================================================================
# RecordingProxy
# ======================================================================================


@dataclass
class ProxyRecord:
    """One request that went through the proxy (filled in as it progresses)."""

    method: str
    path: str
    request_headers: dict[str, str]
    started: float
    """``time.monotonic()`` when the request head arrived."""
    chunked: bool = False
    request_bytes: int = 0
    """Body payload bytes (without chunk framing)."""
    request_complete: bool = False
    parts: list[PartInfo] | None = None
    """Parts of a ``multipart/related`` body (None for other bodies)."""
    status: int | None = None
    """Upstream's status, 502 when upstream could not be reached, None when it never
    answered (connection closed, or still in flight)."""
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""
    """The first MiB of the response body as sent (gzip-encoded if it was: see
    :meth:`response_content`)."""
    finished: float | None = None

    @property
    def content_type(self) -> str | None:
        return self.request_headers.get("content-type")

    @property
    def part_count(self) -> int:
        return len(self.parts or [])

    @property
    def sop_instance_uids(self) -> list[str | None]:
        return [part.sop_instance_uid for part in self.parts or []]

    @property
    def is_stow(self) -> bool:
        return _stow_path(self.method, self.path)

    def response_content(self) -> bytes:
        """The response body without its Content-Encoding (gzip or deflate)."""
        encoding = self.response_headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(self.response_body)
        if encoding == "deflate":
            return zlib.decompress(self.response_body)
        return self.response_body

    def response_json(self) -> Any:
        return json.loads(self.response_content())


def _stow_path(method: str, target: str) -> bool:
    """POST .../studies or POST .../studies/{uid} (STOW-RS)."""
    if method != "POST":
        return False
    segments = [s for s in urlsplit(target).path.split("/") if s]
    return bool(segments) and (
        segments[-1] == "studies" or (len(segments) >= 2 and segments[-2] == "studies")
    )


class RecordingProxy(_BackgroundServer):
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``): each client
    connection gets its own upstream connection, and requests and responses go through byte
    for byte (start line, headers, chunked framing). A request whose upstream cannot be
    reached gets 502; when upstream closes without answering, so does the proxy."""

    name = "recording-proxy"

    def __init__(self, upstream: str) -> None:
        super().__init__()
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._records: list[ProxyRecord] = []

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    # -- what tests read -----------------------------------------------------------------

    @property
    def records(self) -> list[ProxyRecord]:
        with self._lock:
            return list(self._records)

    def stow_posts(self) -> list[ProxyRecord]:
        """Every STOW-RS request (POST .../studies[/{uid}]), in arrival order."""
        return [record for record in self.records if record.is_stow]

    def sent_sop_instance_uids(self) -> list[str | None]:
        """The SOP Instance UID of every part of every STOW-RS request, duplicates kept."""
        return [uid for record in self.stow_posts() for uid in record.sop_instance_uids]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def wait_for(self, count: int, *, stow: bool = True, timeout: float = 10.0) -> None:
        """Block until ``count`` (STOW-RS) requests have been answered."""
        _wait_sync(lambda: self._answered(stow) >= count, timeout, f"{count} requests")

    async def async_wait_for(self, count: int, *, stow: bool = True, timeout: float = 10.0) -> None:
        await _wait(lambda: self._answered(stow) >= count, timeout, f"{count} requests")

    def _answered(self, stow: bool) -> int:
        return sum(1 for r in self.records if r.finished is not None and (r.is_stow or not stow))

    # -- proxying ----------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                method, target = head.start_line.split(" ")[:2]
                record = ProxyRecord(
                    method=method,
                    path=target,
                    request_headers={k.lower(): v for k, v in head.headers},
                    started=time.monotonic(),
                    chunked=head.chunked,
                )
                with self._lock:
                    self._records.append(record)
                if upstream is None:
                    try:
                        upstream = await asyncio.open_connection(
                            self.upstream_host, self.upstream_port, limit=_HEAD_LIMIT
                        )
                    except OSError:
                        await self._bad_gateway(reader, writer, head, record)
                        return
                keep = await self._exchange(head, record, reader, writer, *upstream)
                if not keep:
                    return
        finally:
            if upstream is not None:
                upstream[1].close()

    async def _bad_gateway(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: _Head,
        record: ProxyRecord,
    ) -> None:
        async for _ in _iter_body(reader, head):
            pass
        body = b"upstream unreachable\n"
        record.status = 502
        record.finished = time.monotonic()
        writer.write(
            _response_head(
                502,
                [
                    ("Content-Type", "text/plain"),
                    ("Content-Length", str(len(body))),
                    ("Connection", "close"),
                ],
            )
            + body
        )
        await writer.drain()

    async def _exchange(
        self,
        head: _Head,
        record: ProxyRecord,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """Relay one request and its response; whether both connections stay usable."""
        mime, params = parse_content_type(head.get("content-type"))
        multipart = (
            MultipartReader(params["boundary"])
            if mime == "multipart/related" and "boundary" in params
            else None
        )

        async def send_request() -> None:
            up_writer.write(head.raw)
            async for wire, payload in _iter_body(reader, head):
                record.request_bytes += len(payload)
                if multipart is not None:
                    multipart.feed(payload)
                up_writer.write(wire)
                await up_writer.drain()
            await up_writer.drain()
            record.request_complete = True
            if multipart is not None:
                record.parts = multipart.parts

        async def relay_response() -> _Head:
            # The record is complete before the client can see the end of the response.
            while True:
                response = await _read_head(up_reader)
                if response is None:
                    raise ConnectionResetError("upstream closed without answering")
                code = int(response.start_line.split(" ")[1])
                if not (100 <= code < 200) or code == 101:
                    break
                writer.write(response.raw)  # an interim response (100 Continue)
            record.status = code
            record.response_headers = {k.lower(): v for k, v in response.headers}
            held = response.raw
            if _response_has_body(record.method, code):
                framed = response.chunked or response.content_length is not None
                async for wire, payload in _iter_body(up_reader, response, to_eof=not framed):
                    if len(record.response_body) < _KEEP_RESPONSE:
                        record.response_body += payload[
                            : _KEEP_RESPONSE - len(record.response_body)
                        ]
                    writer.write(held)
                    await writer.drain()
                    held = wire
            record.finished = time.monotonic()
            writer.write(held)
            await writer.drain()
            return response

        sending = asyncio.create_task(send_request())
        relaying = asyncio.create_task(relay_response())
        try:
            done, _ = await asyncio.wait({sending, relaying}, return_when=asyncio.FIRST_EXCEPTION)
            if sending in done and sending.exception() is not None:
                # The client went away mid-request: so does the proxy, towards upstream too.
                relaying.cancel()
                up_writer.transport.abort()
                return False
            response = await relaying
        except BaseException:
            sending.cancel()
            relaying.cancel()
            up_writer.transport.abort()
            raise
        finally:
            if record.finished is None:
                record.finished = time.monotonic()
        if not sending.done():
            # Upstream answered before reading the whole request (e.g. 401): both close.
            sending.cancel()
            return False
        if multipart is not None:
            record.parts = multipart.parts
        framed = response.chunked or response.content_length is not None
        return not (head.wants_close() or response.wants_close() or not framed)


# ======================================================================================
# FaultPacs
# ======================================================================================


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


@dataclass
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class PacsRequest:
    """One request :class:`FaultPacs` received."""

    at: float
    """``time.monotonic()`` when the request head arrived."""
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Lower-cased names; Authorization left out."""
    authorized: bool
    behaviour: str
    body_bytes: int = 0
    chunked: bool = False
    parts: list[PartInfo] = field(default_factory=list)
    status: int | None = None
    """What was answered; None for :func:`hang` and :func:`drop`."""
    response: Any = None
    """The JSON answered, when it was JSON."""
    answered_at: float | None = None
    """``time.monotonic()`` when the answer began to go out."""

    @property
    def sop_instance_uids(self) -> list[str | None]:
        return [part.sop_instance_uid for part in self.parts]

    @property
    def is_stow(self) -> bool:
        return _stow_path(self.method, self.path)

    @property
    def is_qido(self) -> bool:
        return self.method == "GET"


class FaultPacs(_BackgroundServer):
    """A scriptable DICOMweb server: STOW-RS ``POST {root}/studies[/{uid}]`` and QIDO-RS
    ``GET {root}/studies``, ``{root}/studies/{uid}/instances`` and
    ``{root}/studies/{uid}/series/{uid}/instances`` (``limit``, ``offset``).

    Each request takes the next behaviour from its queue (:meth:`script_stow`,
    :meth:`script_qido`), or the default (:func:`ok`) when the queue is empty. A request
    with wrong credentials gets 401 and takes nothing from the queue. Accepted instances are
    kept in memory (:attr:`stored`), whole."""

    name = "fault-pacs"

    def __init__(
        self,
        *,
        root: str = "/dicom-web",
        auth: tuple[str, str] | None = None,
        bearer: str | None = None,
    ) -> None:
        super().__init__()
        self.root = "/" + root.strip("/") if root.strip("/") else ""
        self.basic_auth = auth
        self.bearer = bearer
        self.default_stow: Behaviour = ok()
        self.default_qido: Behaviour = ok()
        self.qido_page_cap: int | None = None
        """At most this many items per QIDO-RS answer, whatever `limit` asks (as a PACS with
        a maximum of its own does)."""
        self._stow_queue: deque[Behaviour] = deque()
        self._qido_queue: deque[Behaviour] = deque()
        self._requests: list[PacsRequest] = []
        self._stored: dict[str, StoredInstance] = {}

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}{self.root}"

    # -- scripting and inspection --------------------------------------------------------

    def script_stow(self, *behaviours: Behaviour) -> None:
        """Append answers for the next STOW-RS requests, in order."""
        self._stow_queue.extend(behaviours)

    def script_qido(self, *behaviours: Behaviour) -> None:
        """Append answers for the next QIDO-RS requests, in order."""
        self._qido_queue.extend(behaviours)

    @property
    def pending_stow(self) -> int:
        return len(self._stow_queue)

    @property
    def requests(self) -> list[PacsRequest]:
        with self._lock:
            return list(self._requests)

    def stow_requests(self) -> list[PacsRequest]:
        return [r for r in self.requests if r.is_stow]

    def qido_requests(self) -> list[PacsRequest]:
        return [r for r in self.requests if r.is_qido]

    @property
    def stored(self) -> dict[str, StoredInstance]:
        with self._lock:
            return dict(self._stored)

    def sop_instance_uids(self, study_uid: str | None = None) -> set[str]:
        return {
            uid
            for uid, instance in self.stored.items()
            if study_uid is None or instance.study_instance_uid == study_uid
        }

    def clear(self, *, script: bool = False) -> None:
        """Forget the requests and the stored instances (and, with ``script``, the behaviours
        still queued)."""
        with self._lock:
            self._requests.clear()
            self._stored.clear()
        if script:
            self._stow_queue.clear()
            self._qido_queue.clear()

    def wait_for(self, count: int, *, stow: bool = True, timeout: float = 10.0) -> None:
        """Block until ``count`` (STOW-RS) requests have arrived (answered or not)."""
        _wait_sync(lambda: self._arrived(stow) >= count, timeout, f"{count} requests")

    async def async_wait_for(self, count: int, *, stow: bool = True, timeout: float = 10.0) -> None:
        await _wait(lambda: self._arrived(stow) >= count, timeout, f"{count} requests")

    def _arrived(self, stow: bool) -> int:
        return sum(1 for r in self.requests if r.is_stow or not stow)

    # -- serving -------------------------------------------------------------------------

    def _authorized(self, head: _Head) -> bool:
        if self.basic_auth is None and self.bearer is None:
            return True
        value = head.get("authorization") or ""
        scheme, _, credentials = value.partition(" ")
        if self.bearer is not None and scheme.lower() == "bearer":
            return secrets.compare_digest(credentials.strip(), self.bearer)
        if self.basic_auth is not None and scheme.lower() == "basic":
            expected = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            return secrets.compare_digest(credentials.strip(), expected)
        return False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await _read_head(reader)
            if head is None:
                return
            method, target = head.start_line.split(" ")[:2]
            url = urlsplit(target)
            path = unquote(url.path)
            request = PacsRequest(
                at=time.monotonic(),
                method=method,
                path=path,
                query=parse_qs(url.query),
                headers={k.lower(): v for k, v in head.headers if k.lower() != "authorization"},
                authorized=self._authorized(head),
                behaviour="",
                chunked=head.chunked,
            )
            with self._lock:
                self._requests.append(request)
            if not await self._serve(request, head, reader, writer):
                return

    async def _read_body(
        self, request: PacsRequest, head: _Head, reader: asyncio.StreamReader
    ) -> bytes:
        body = bytearray()
        async for _, payload in _iter_body(reader, head):
            body += payload
        request.body_bytes = len(body)
        return bytes(body)

    async def _serve(
        self,
        request: PacsRequest,
        head: _Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; whether the connection stays open."""
        if not request.authorized:
            await self._read_body(request, head, reader)
            request.behaviour = "unauthorized"
            await self._send(
                request, writer, 401, b"", extra=[("WWW-Authenticate", 'Basic realm="pacs"')]
            )
            return not head.wants_close()

        route = self._route(request)
        if route is None:
            await self._read_body(request, head, reader)
            request.behaviour = "not found"
            await self._send(request, writer, 404, b"")
            return not head.wants_close()

        queue = self._stow_queue if route == "stow" else self._qido_queue
        try:
            behaviour = queue.popleft()
        except IndexError:
            behaviour = self.default_stow if route == "stow" else self.default_qido
        request.behaviour = behaviour.describe()

        if behaviour.kind in ("hang", "drop") and not behaviour.read_body:
            return await self._hang_or_drop(behaviour, writer)
        body = await self._read_body(request, head, reader)
        if route == "stow":
            mime, params = parse_content_type(head.get("content-type"))
            if mime == "multipart/related" and "boundary" in params:
                request.parts = parse_multipart(body, head.get("content-type") or "")
        if behaviour.kind in ("hang", "drop"):
            return await self._hang_or_drop(behaviour, writer)

        delay, trickle = 0.0, False
        if behaviour.kind == "slow":
            delay, trickle = behaviour.seconds, behaviour.trickle
            behaviour = behaviour.then or ok()
            if not trickle:
                await asyncio.sleep(delay)

        code, answer = (
            self._stow(request, head, behaviour)
            if route == "stow"
            else self._qido(request, behaviour)
        )
        if isinstance(answer, bytes):
            payload, content_type = answer, "text/plain"
        else:
            request.response = answer
            payload, content_type = json.dumps(answer).encode(), "application/dicom+json"
        await self._send(
            request,
            writer,
            code,
            payload,
            content_type=content_type,
            trickle_seconds=delay if trickle else 0.0,
        )
        return not head.wants_close()

    async def _hang_or_drop(self, behaviour: Behaviour, writer: asyncio.StreamWriter) -> bool:
        if behaviour.kind == "hang":
            await asyncio.Event().wait()  # until stop() cancels this connection
        sock = writer.get_extra_info("socket")
        if behaviour.reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return False

    def _route(self, request: PacsRequest) -> Literal["stow", "qido"] | None:
        path = request.path
        if self.root:
            if not path.startswith(self.root + "/"):
                return None
            path = path[len(self.root) :]
        segments = [s for s in path.split("/") if s]
        if request.method == "POST" and segments[:1] == ["studies"] and len(segments) <= 2:
            return "stow"
        if request.method == "GET" and (
            segments == ["studies"]
            or (len(segments) == 3 and segments[0] == "studies" and segments[2] == "instances")
            or (
                len(segments) == 5
                and segments[0] == "studies"
                and segments[2] == "series"
                and segments[4] == "instances"
            )
        ):
            return "qido"
        return None

    # -- STOW-RS -------------------------------------------------------------------------

    def _stow(self, request: PacsRequest, head: _Head, behaviour: Behaviour) -> tuple[int, Any]:
        if behaviour.kind == "status":
            return behaviour.code, behaviour.body if behaviour.body is not None else {}
        mime, params = parse_content_type(head.get("content-type"))
        if mime != "multipart/related" or "boundary" not in params:
            return 415, {}
        if params.get("type", "").lower() != "application/dicom":
            return 415, {}
        if any(
            (p.content_type or "").split(";")[0].strip().lower() != "application/dicom"
            for p in request.parts
        ):
            return 415, {}
        segments = [s for s in request.path[len(self.root) :].split("/") if s]
        expected_study = segments[1] if len(segments) == 2 else None
        reasons = dict(behaviour.reasons)

        referenced: list[JsonDict] = []
        failures: list[JsonDict] = []
        conflict = bad = False
        first_study: str | None = None
        for part in request.parts:
            uids = part.uids
            if not uids.complete or part.data is None:
                bad = True
                if uids.sop_instance_uid and uids.sop_class_uid:
                    failures.append(_failure_item(uids, 0xC000))
                continue
            assert uids.sop_instance_uid
            assert uids.sop_class_uid
            assert uids.study_instance_uid
            assert uids.series_instance_uid
            if expected_study is not None and uids.study_instance_uid != expected_study:
                conflict = True
                failures.append(_failure_item(uids, 0x0110))
                continue
            if uids.sop_instance_uid in behaviour.omitted:
                continue
            if uids.sop_instance_uid in reasons:
                failures.append(_failure_item(uids, reasons[uids.sop_instance_uid]))
                continue
            with self._lock:
                self._stored.setdefault(
                    uids.sop_instance_uid,
                    StoredInstance(
                        sop_instance_uid=uids.sop_instance_uid,
                        sop_class_uid=uids.sop_class_uid,
                        study_instance_uid=uids.study_instance_uid,
                        series_instance_uid=uids.series_instance_uid,
                        data=part.data,
                    ),
                )
            first_study = first_study or uids.study_instance_uid
            referenced.append(
                {
                    REFERENCED_SOP_CLASS_UID: _ui(uids.sop_class_uid),
                    REFERENCED_SOP_INSTANCE_UID: _ui(uids.sop_instance_uid),
                    RETRIEVE_URL: _ur(
                        f"{self.dicomweb_url}/studies/{uids.study_instance_uid}/series/"
                        f"{uids.series_instance_uid}/instances/{uids.sop_instance_uid}"
                    ),
                }
            )
        answer: JsonDict = {}
        if first_study is not None:
            answer[RETRIEVE_URL] = _ur(f"{self.dicomweb_url}/studies/{first_study}")
        if failures:
            answer[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failures}
        if referenced:
            answer[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
        if behaviour.kind == "failed":
            return behaviour.code, answer
        if not failures and not bad:
            return 200, answer
        if referenced:
            return 202, answer
        return (409 if conflict else 400), answer

    # -- QIDO-RS -------------------------------------------------------------------------

    def _qido(self, request: PacsRequest, behaviour: Behaviour) -> tuple[int, Any]:
        if behaviour.kind == "status":
            return behaviour.code, behaviour.body if behaviour.body is not None else {}
        segments = [s for s in request.path[len(self.root) :].split("/") if s]
        instances = [i for i in self.stored.values() if i.sop_instance_uid not in behaviour.hidden]

        def first(name: str) -> str | None:
            values = request.query.get(name)
            return values[0] if values else None

        if segments == ["studies"]:
            wanted = first("StudyInstanceUID") or first(STUDY_INSTANCE_UID)
            counts: dict[str, int] = {}
            for instance in instances:
                counts[instance.study_instance_uid] = counts.get(instance.study_instance_uid, 0) + 1
            items: list[JsonDict] = [
                {
                    STUDY_INSTANCE_UID: _ui(study),
                    NUMBER_OF_STUDY_RELATED_INSTANCES: {"vr": "IS", "Value": [count]},
                    RETRIEVE_URL: _ur(f"{self.dicomweb_url}/studies/{study}"),
                }
                for study, count in sorted(counts.items())
                if wanted is None or study in wanted.split(",")
            ]
        else:
            study = segments[1]
            series = segments[3] if len(segments) == 5 else None
            items = [
                {
                    SOP_CLASS_UID: _ui(i.sop_class_uid),
                    SOP_INSTANCE_UID: _ui(i.sop_instance_uid),
                    STUDY_INSTANCE_UID: _ui(i.study_instance_uid),
                    SERIES_INSTANCE_UID: _ui(i.series_instance_uid),
                    RETRIEVE_URL: _ur(
                        f"{self.dicomweb_url}/studies/{i.study_instance_uid}/series/"
                        f"{i.series_instance_uid}/instances/{i.sop_instance_uid}"
                    ),
                }
                for i in instances
                if i.study_instance_uid == study
                and (series is None or i.series_instance_uid == series)
            ]
        offset = int(first("offset") or 0)
        limit = int(first("limit") or 0)
        items = items[offset:]
        if limit > 0:
            items = items[:limit]
        if self.qido_page_cap is not None:
            items = items[: self.qido_page_cap]
        return 200, items

    # -- sending -------------------------------------------------------------------------

    async def _send(
        self,
        request: PacsRequest,
        writer: asyncio.StreamWriter,
        code: int,
        payload: bytes,
        *,
        content_type: str = "text/plain",
        extra: Sequence[tuple[str, str]] = (),
        trickle_seconds: float = 0.0,
    ) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
        headers += list(extra)
        request.status = code
        request.answered_at = time.monotonic()
        writer.write(_response_head(code, headers))
        if trickle_seconds > 0 and payload:
            await writer.drain()
            pieces = min(len(payload), 20)
            size = -(-len(payload) // pieces)
            for index in range(0, len(payload), size):
                await asyncio.sleep(trickle_seconds / pieces)
                writer.write(payload[index : index + size])
                await writer.drain()
        else:
            writer.write(payload)
            await writer.drain()


def _ui(value: str) -> JsonDict:
    return {"vr": "UI", "Value": [value]}


def _ur(value: str) -> JsonDict:
    return {"vr": "UR", "Value": [value]}


def _failure_item(uids: DicomUids, reason: int) -> JsonDict:
    return {
        REFERENCED_SOP_CLASS_UID: _ui(uids.sop_class_uid or ""),
        REFERENCED_SOP_INSTANCE_UID: _ui(uids.sop_instance_uid or ""),
        FAILURE_REASON: {"vr": "US", "Value": [reason]},
    }
