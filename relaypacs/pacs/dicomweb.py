"""A DICOMweb client for one PACS target: STOW-RS streamed from object storage, QIDO-RS listing.

Knows nothing of the database. Every answer is classified per instance (stored, retry later,
failed for good) following PS3.18 and what Orthanc and dcm4chee-arc actually answer: Orthanc
1.10 with DICOMweb 1.7 answers 200 even when instances failed, so FailedSOPSequence is always
read. Credentials never appear in messages or logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from relaypacs.config import PacsTarget
from relaypacs.storage import ObjectStorage, StorageError
from relaypacs.telemetry import REQUEST_ID
from relaypacs.telemetry.metrics import PACS_REQUEST_DURATION, PACS_REQUEST_ERRORS

logger = logging.getLogger(__name__)

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
SOP_INSTANCE_UID = "00080018"
PREAMBLE = 128
WHOLE_READ_BYTES = 4 << 20  # at most max_in_flight of these are held at once
# At most this many SOP Instance UIDs are looked up in Orthanc by one list-matching /tools/find
# (the request carries them all); more, and the whole study is listed instead.
_FIND_BY_LIST = 200

# A first word with a PACS: a hung one is reported in seconds, not after the read timeout.
PROBE_SECONDS = 5.0


class Disposition(enum.StrEnum):
    STORED = "stored"
    RETRY = "retry"  # transient: send again later
    FAILED = "failed"  # permanent: the PACS will never take it as it is


@dataclass(frozen=True)
class InstancePart:
    """One instance to send: its bytes are the concatenation of `keys` in storage."""

    file_index: int
    sop_instance_uid: str
    size: int
    keys: tuple[str, ...]
    zero_preamble: bool = False


@dataclass(frozen=True)
class InstanceResult:
    file_index: int
    disposition: Disposition
    reason: str | None = None
    md5: str | None = None  # of the bytes sent, when stored and the target verifies by MD5


@dataclass(frozen=True)
class StowOutcome:
    results: list[InstanceResult]
    http_status: int | None
    # Set when the target itself failed (network, timeout, 5xx, refused credentials): such a
    # failure counts towards the target's circuit breaker. Not set for a storage failure here.
    target_error: str | None = None


def classify_reason(code: int) -> Disposition:
    """FailureReason (0008,1197): A7xx (out of resources) and 0110 (processing failure) are
    transient; A9xx, Cxxx, 0122 and everything else are permanent."""
    if 0xA700 <= code <= 0xA7FF or code == 0x0110:
        return Disposition.RETRY
    return Disposition.FAILED


def _referenced(body: Any) -> set[str] | None:
    """SOP Instance UIDs in ReferencedSOPSequence (stored), or None if the answer has none."""
    datasets = body if isinstance(body, list) else [body]
    found: set[str] | None = None
    for dataset in datasets:
        if not isinstance(dataset, dict) or REFERENCED_SOP_SEQUENCE not in dataset:
            continue
        found = found or set()
        for item in (dataset.get(REFERENCED_SOP_SEQUENCE) or {}).get("Value") or []:
            if isinstance(item, dict):
                uids = (item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or []
                if uids and isinstance(uids[0], str):
                    found.add(uids[0])
    return found


def _failures(body: Any) -> dict[str, int]:
    """SOP Instance UID -> FailureReason from a STOW-RS response (DICOM JSON)."""
    datasets = body if isinstance(body, list) else [body]
    failed: dict[str, int] = {}
    for dataset in datasets:
        if not isinstance(dataset, dict):
            continue
        for item in (dataset.get(FAILED_SOP_SEQUENCE) or {}).get("Value") or []:
            if not isinstance(item, dict):
                continue
            uids = (item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or []
            reasons = (item.get(FAILURE_REASON) or {}).get("Value") or [0x0110]
            if uids and isinstance(uids[0], str):
                reason = reasons[0] if isinstance(reasons[0], int) else 0x0110
                failed[uids[0]] = reason
    return failed


PACS_OPERATIONS = ("stow", "qido", "verify", "probe")


def _operation(request: httpx.Request) -> str:
    """What a request to the PACS is for (a metric's label): never its path, which names a
    study."""
    path = request.url.path
    if request.method == "POST" and "/studies/" in path and "/tools/" not in path:
        return "stow"
    if path.endswith("/instances"):
        return "qido"
    if path.endswith("/studies"):
        return "probe"
    return "verify"


async def _pass_request_id(request: httpx.Request) -> None:
    """The id of the request or job this call to the PACS is made for, as X-Request-ID (a
    header PACS servers log or ignore): the same id in both logs."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        request.headers["X-Request-ID"] = request_id


class MeteredTransport(httpx.AsyncBaseTransport):
    """Times every request to a PACS (until its answer's headers) and counts its failures,
    by target and operation; the metric children are bound once per target."""

    def __init__(self, inner: httpx.AsyncBaseTransport, target: str) -> None:
        self._inner = inner
        self._durations = {op: PACS_REQUEST_DURATION.labels(target, op) for op in PACS_OPERATIONS}
        self._errors = {
            (op, kind): PACS_REQUEST_ERRORS.labels(target, op, kind)
            for op in PACS_OPERATIONS
            for kind in ("timeout", "network", "http_5xx")
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        operation = _operation(request)
        began = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException:
            self._errors[operation, "timeout"].inc()
            raise
        except httpx.TransportError:
            self._errors[operation, "network"].inc()
            raise
        finally:
            self._durations[operation].observe(time.perf_counter() - began)
        if response.status_code >= 500:
            self._errors[operation, "http_5xx"].inc()
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class DicomWebClient:
    def __init__(self, target: PacsTarget, storage: ObjectStorage) -> None:
        self.target = target
        self._storage = storage
        auth: httpx.Auth | None = None
        headers = {"User-Agent": "RelayPACS"}
        if target.token is not None:
            headers["Authorization"] = f"Bearer {target.token.get_secret_value()}"
        elif target.username is not None and target.password is not None:
            auth = httpx.BasicAuth(target.username, target.password.get_secret_value())
        verify: ssl.SSLContext | bool = target.verify_tls
        if target.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(target.ca_file))
        transport = httpx.AsyncHTTPTransport(
            verify=verify,
            limits=httpx.Limits(
                max_connections=target.max_in_flight + 2,
                max_keepalive_connections=target.max_in_flight,
            ),
        )
        self._client = httpx.AsyncClient(
            base_url=target.url,
            auth=auth,
            headers=headers,
            transport=MeteredTransport(transport, target.name),
            event_hooks={"request": [_pass_request_id]},
            timeout=httpx.Timeout(
                target.read_timeout, connect=target.connect_timeout, pool=target.read_timeout
            ),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- STOW-RS -------------------------------------------------------------------------

    async def store(self, study_uid: str, parts: Sequence[InstancePart]) -> StowOutcome:
        boundary = uuid.uuid4().hex
        heads = [
            (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n"
                f"Content-Length: {part.size}\r\n\r\n"
            ).encode()
            for part in parts
        ]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + p.size + 2 for h, p in zip(heads, parts, strict=True)) + len(tail)
        md5s: dict[int, str] = {}

        async def body() -> AsyncIterator[bytes]:
            for head, part in zip(heads, parts, strict=True):
                yield head
                digest = hashlib.md5(usedforsecurity=False) if self.md5_on_send else None
                async for block in self.sent_bytes(part):
                    if digest is not None:
                        digest.update(block)
                    yield block
                if digest is not None:
                    md5s[part.file_index] = digest.hexdigest()
                yield b"\r\n"
            yield tail

        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Content-Length": str(length),
        }
        try:
            response = await self._client.post(
                f"/studies/{study_uid}", content=body(), headers=headers
            )
        except StorageError as exc:
            logger.warning("reading an instance from storage failed: %s", type(exc).__name__)
            return StowOutcome(_all(parts, Disposition.RETRY, "storage_unavailable"), None)
        except httpx.TimeoutException:
            return StowOutcome(_all(parts, Disposition.RETRY, "timeout"), None, "timeout")
        except httpx.TransportError as exc:
            error = f"network: {type(exc).__name__}"
            return StowOutcome(_all(parts, Disposition.RETRY, error), None, error)
        outcome = self._judge(parts, response)
        if md5s:
            outcome.results[:] = [
                dataclasses.replace(r, md5=md5s.get(r.file_index))
                if r.disposition == Disposition.STORED
                else r
                for r in outcome.results
            ]
        return outcome

    @property
    def md5_on_send(self) -> bool:
        """Whether the MD5 of each instance is taken as it is sent: Orthanc's content
        verification compares it with the stored file's."""
        return self.target.profile == "orthanc" and self.target.verify_mode != "uids"

    async def sent_bytes(self, part: InstancePart) -> AsyncIterator[bytes]:
        """The instance's bytes as the PACS is sent them: as stored, a nonzero preamble
        zeroed. Raises StorageError when storage does not have them all."""
        offset = 0
        async for block in self._instance_blocks(part):
            if part.zero_preamble and offset < PREAMBLE:
                cut = min(PREAMBLE - offset, len(block))
                block = bytes(cut) + bytes(block[cut:])
            offset += len(block)
            yield block
        if offset != part.size:
            raise StorageError("stored instance does not have its manifest size")

    async def _instance_blocks(self, part: InstancePart) -> AsyncIterator[bytes]:
        """The stored bytes of one instance. A small single-chunk instance (most of them: a CT
        slice is 0.5 MB) in one storage call, where streaming it would be three (open, read,
        read to the end), each a hop to a thread: at hundreds of instances per second those
        hops were a good part of the gateway's CPU while forwarding."""
        if len(part.keys) == 1 and part.size <= WHOLE_READ_BYTES:
            yield await self._storage.get(part.keys[0])
            return
        for key in part.keys:
            async for block in self._storage.stream(key):
                yield block

    def _judge(self, parts: Sequence[InstancePart], response: httpx.Response) -> StowOutcome:
        status = response.status_code
        try:
            body = response.json() if response.content else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {}
        failed = _failures(body)
        referenced = _referenced(body)
        if status in (200, 202):
            results = []
            for part in parts:
                if part.sop_instance_uid in failed:
                    code = failed[part.sop_instance_uid]
                    results.append(
                        InstanceResult(part.file_index, classify_reason(code), f"{code:04X}")
                    )
                elif referenced is None or part.sop_instance_uid in referenced:
                    results.append(InstanceResult(part.file_index, Disposition.STORED))
                else:
                    # Listed nowhere: Orthanc 1.10 answers 200 without the instance (and every
                    # later part) when storing it failed. Send it again.
                    results.append(
                        InstanceResult(part.file_index, Disposition.RETRY, "not_acknowledged")
                    )
            return StowOutcome(results, status)
        if status in (401, 403):
            error = f"http_{status}: the PACS refused the gateway's credentials"
            return StowOutcome(_all(parts, Disposition.RETRY, error), status, error)
        if status in (408, 425, 429) or status >= 500:
            error = f"http_{status}"
            return StowOutcome(_all(parts, Disposition.RETRY, error), status, error)
        # 400, 409, 415 and other client errors: permanent, with the PACS's own reason where
        # it gave one per instance; instances it lists as stored were stored (Orthanc stores
        # the good parts of a request it answers 400 or 409).
        results = []
        for part in parts:
            reason = failed.get(part.sop_instance_uid)
            if referenced is not None and part.sop_instance_uid in referenced:
                results.append(InstanceResult(part.file_index, Disposition.STORED))
            elif reason is not None:
                results.append(
                    InstanceResult(part.file_index, classify_reason(reason), f"{reason:04X}")
                )
            else:
                results.append(
                    InstanceResult(part.file_index, Disposition.FAILED, f"http_{status}")
                )
        return StowOutcome(results, status)

    # --- QIDO-RS -------------------------------------------------------------------------

    async def instance_uids(
        self, study_uid: str, *, expected: int = 0, page: int = 1000, parallel: int = 3
    ) -> set[str]:
        """Every SOP Instance UID the PACS lists for the study (paged with limit/offset).

        The pages that `expected` instances need are asked for at once, split in at least
        `parallel` pages: a PACS answers each page on its own thread, and building the answer
        is its slow part (Orthanc 1.10 reads every instance's file for the default attributes:
        300 instances took 0.47 s in one page, 0.24 s in 2 or 3 pages at once here). Then page
        by page while pages come back full. Raises httpx.HTTPError when the PACS cannot
        answer."""
        found: set[str] = set()
        # One more than expected: when every instance is listed, the last page is not full
        # and no empty page has to be asked for to prove that nothing follows.
        wanted = expected + 1
        size = max(1, min(page, -(-wanted // max(1, parallel))))
        first = -(-wanted // size)
        pages = await asyncio.gather(
            *(self._instances_page(study_uid, i * size, size) for i in range(first))
        )
        if any(0 < count < size for _, count in pages[:-1]):
            # The PACS gives fewer per page than asked (a cap of its own): the pages asked
            # for at once left gaps, so walk the study by what it gives until it gives nothing.
            offset, count = 0, size
            while count:
                uids, count = await self._instances_page(study_uid, offset, size)
                found.update(uids)
                offset += count
            return found
        for uids, _ in pages:
            found.update(uids)
        offset, last_count = first * size, pages[-1][1]
        while last_count == size:  # a full last page: there may be more
            uids, last_count = await self._instances_page(study_uid, offset, size)
            found.update(uids)
            offset += size
        return found

    async def _instances_page(
        self, study_uid: str, offset: int, page: int
    ) -> tuple[list[str], int]:
        """The SOP Instance UIDs of one QIDO-RS page, and how many items the page had."""
        params: dict[str, str | int] = {"limit": page, "offset": offset}
        if self.target.profile != "orthanc":
            params["includefield"] = SOP_INSTANCE_UID
        response = await self._client.get(
            f"/studies/{study_uid}/instances",
            params=params,
            headers={"Accept": "application/dicom+json"},
        )
        if response.status_code in (204, 404):
            return [], 0
        response.raise_for_status()
        items = response.json() if response.content else []
        if not isinstance(items, list):
            return [], 0
        uids: list[str] = []
        for item in items:
            if isinstance(item, dict):
                values = (item.get(SOP_INSTANCE_UID) or {}).get("Value") or []
                if values and isinstance(values[0], str):
                    uids.append(values[0])
        return uids, len(items)

    # --- what the PACS holds: content ---------------------------------------------------

    async def orthanc_md5s(self, study_uid: str, sop_uids: Sequence[str]) -> dict[str, str]:
        """Orthanc's REST API: the MD5 of the file it stores for each of these SOP instances
        of the study (those it does not hold: absent). Their Orthanc ids from /tools/find (by
        the list of UIDs when there are few: DICOM's list-of-UIDs matching; what that does not
        find, and any larger set, by the whole study), then one request per instance,
        `max_in_flight` at once. Raises httpx.HTTPError."""
        root = self.target.orthanc_rest_url

        async def find(query: dict[str, str]) -> dict[str, str]:
            response = await self._client.post(
                f"{root}/tools/find", json={"Level": "Instance", "Query": query, "Expand": True}
            )
            response.raise_for_status()
            found: dict[str, str] = {}
            for item in response.json():
                if isinstance(item, dict):
                    tags = item.get("MainDicomTags") or {}
                    uid, orthanc_id = tags.get("SOPInstanceUID"), item.get("ID")
                    if isinstance(uid, str) and isinstance(orthanc_id, str):
                        found[uid] = orthanc_id
            return found

        ids: dict[str, str] = {}
        few = 0 < len(sop_uids) <= _FIND_BY_LIST
        if few:
            ids = await find({"StudyInstanceUID": study_uid, "SOPInstanceUID": "\\".join(sop_uids)})
        if not few or any(uid not in ids for uid in sop_uids):
            ids = await find({"StudyInstanceUID": study_uid})
        wanted = [uid for uid in sop_uids if uid in ids]
        semaphore = asyncio.Semaphore(self.target.max_in_flight)

        async def md5_of(uid: str) -> tuple[str, str]:
            async with semaphore:
                answer = await self._client.get(
                    f"{root}/instances/{ids[uid]}/attachments/dicom/md5"
                )
            answer.raise_for_status()
            return uid, answer.text.strip().lower()

        return dict(await asyncio.gather(*(md5_of(uid) for uid in wanted)))

    async def retrieve_sha256(self, study_uid: str, series_uid: str, sop_uid: str) -> str | None:
        """WADO-RS: the SHA-256 of the instance as the PACS holds it (original transfer
        syntax, `transfer-syntax=*`), streamed; None when the PACS does not have it. Raises
        httpx.HTTPError."""
        url = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        async with self._client.stream("GET", url, headers={"Accept": accept}) as response:
            if response.status_code in (204, 404):
                return None
            response.raise_for_status()
            _, _, rest = (response.headers.get("content-type") or "").partition("boundary=")
            boundary = rest.split(";")[0].strip().strip('"')
            if not boundary:
                raise httpx.DecodingError("a WADO-RS answer without a multipart boundary")
            part = _FirstPartDigest(boundary.encode())
            async for block in response.aiter_bytes():
                part.feed(block)
            return part.hexdigest()

    async def probe(self, within: float = PROBE_SECONDS) -> str | None:
        """None if the PACS answers (any HTTP status but 5xx) within `within` seconds, else
        why not."""
        try:
            response = await self._client.get(
                "/studies",
                params={"limit": 1},
                headers={"Accept": "application/dicom+json"},
                timeout=within,
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code in (401, 403):
            return f"http_{response.status_code}: the PACS refused the gateway's credentials"
        if response.status_code >= 500:
            return f"http_{response.status_code}"
        return None


class _FirstPartDigest:
    """The SHA-256 of the first part's body of a multipart answer, fed as it arrives: memory
    stays a few blocks whatever the instance's size."""

    def __init__(self, boundary: bytes) -> None:
        self._opening = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._buffer = b""
        self._in_body = False
        self._done = False
        self._digest = hashlib.sha256()

    def feed(self, block: bytes) -> None:
        if self._done:
            return
        self._buffer += block
        if not self._in_body:
            start = self._buffer.find(self._opening)
            end = self._buffer.find(b"\r\n\r\n", start) if start >= 0 else -1
            if end < 0:
                return
            self._buffer = self._buffer[end + 4 :]
            self._in_body = True
        stop = self._buffer.find(self._delimiter)
        if stop >= 0:
            self._digest.update(self._buffer[:stop])
            self._buffer, self._done = b"", True
            return
        # Keep what could be the start of the delimiter split across blocks.
        keep = len(self._delimiter)
        self._digest.update(self._buffer[:-keep])
        self._buffer = self._buffer[-keep:]

    def hexdigest(self) -> str:
        if not self._done:
            raise httpx.DecodingError("a WADO-RS answer whose part does not end")
        return self._digest.hexdigest()


def _all(
    parts: Sequence[InstancePart], disposition: Disposition, reason: str
) -> list[InstanceResult]:
    return [InstanceResult(p.file_index, disposition, reason) for p in parts]
