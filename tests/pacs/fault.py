"""The fault PACS: a small DICOMweb server (STOW-RS and QIDO-RS) whose answers a test scripts
one request at a time (``tests.pacs.behaviours``), recording every request with its arrival
time and keeping what it stored in memory."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from tests.pacs.behaviours import Behaviour, ok
from tests.pacs.dicomweb import (
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    REFERENCED_SOP_CLASS_UID,
    REFERENCED_SOP_INSTANCE_UID,
    REFERENCED_SOP_SEQUENCE,
    RETRIEVE_URL,
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    DicomUids,
    JsonDict,
    PartInfo,
    parse_content_type,
    parse_multipart,
    stow_path,
)
from tests.pacs.loopback import (
    BackgroundServer,
    Head,
    iter_body,
    read_head,
    response_head,
)


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
        return stow_path(self.method, self.path)

    @property
    def is_qido(self) -> bool:
        return self.method == "GET"


class FaultPacs(BackgroundServer):
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

    def _counted(self, stow: bool) -> int:
        """:meth:`wait_for` waits until ``count`` (STOW-RS) requests have arrived (answered or
        not)."""
        return sum(1 for r in self.requests if r.is_stow or not stow)

    # -- serving -------------------------------------------------------------------------

    def _authorized(self, head: Head) -> bool:
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
            head = await read_head(reader)
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
        self, request: PacsRequest, head: Head, reader: asyncio.StreamReader
    ) -> bytes:
        body = bytearray()
        async for _, payload in iter_body(reader, head):
            body += payload
        request.body_bytes = len(body)
        return bytes(body)

    async def _serve(
        self,
        request: PacsRequest,
        head: Head,
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

    def _stow(self, request: PacsRequest, head: Head, behaviour: Behaviour) -> tuple[int, Any]:
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
        writer.write(response_head(code, headers))
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
