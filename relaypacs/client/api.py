"""Async client of the gateway's HTTP API (docs/api.md): login, uploads, chunks, complete.

One ``httpx.AsyncClient`` (HTTP/1.1 keep-alive) per GatewayClient. Every request is retried
on network errors, timeouts, 408/425/429/5xx (Retry-After honoured) with exponential backoff and
jitter; a 401 on an authenticated request logs in again once and retries it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from relaypacs.client.errors import (
    ApiError,
    AuthenticationError,
    ClientError,
    ServerUnreachableError,
)
from relaypacs.client.retry import RETRYABLE_STATUS, RetryPolicy, parse_retry_after

__all__ = [
    "API_PREFIX",
    "ChunkReceipt",
    "GatewayClient",
    "RemoteFile",
    "RemoteForwarding",
    "RemoteUpload",
    "StartOutcome",
    "StartResult",
]

API_PREFIX = "/api/v1"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file of an upload as the server sees it."""

    index: int
    name: str
    size: int
    sha256: str
    chunk_count: int
    missing_chunks: tuple[int, ...]
    status: str
    kind: str | None
    error: Any
    # Where the file stands with the PACS: pending, sent, confirmed, failed (None: not queued).
    forward_status: str | None = None
    forward_error: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteFile:
        forward_status = data.get("forward_status")
        forward_error = data.get("forward_error")
        return cls(
            index=int(data["index"]),
            name=str(data.get("name", "")),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            chunk_count=int(data.get("chunk_count", 0)),
            missing_chunks=tuple(int(c) for c in data.get("missing_chunks") or ()),
            status=str(data.get("status", "")),
            kind=data.get("kind"),
            error=data.get("error"),
            forward_status=None if forward_status is None else str(forward_status),
            forward_error=None if forward_error is None else str(forward_error),
        )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class RemoteForwarding:
    """``UploadRead.forwarding``: where the study stands with the PACS."""

    target: str
    status: str  # of the forwarding job: queued, done, cancelled
    instances: int
    sent: int
    confirmed: int
    failed: int
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    delivered_at: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteForwarding:
        return cls(
            target=str(data.get("target", "")),
            status=str(data.get("status", "")),
            instances=int(data.get("instances") or 0),
            sent=int(data.get("sent") or 0),
            confirmed=int(data.get("confirmed") or 0),
            failed=int(data.get("failed") or 0),
            attempts=int(data.get("attempts") or 0),
            next_attempt_at=_optional_str(data.get("next_attempt_at")),
            last_error=_optional_str(data.get("last_error")),
            delivered_at=_optional_str(data.get("delivered_at")),
        )


@dataclass(frozen=True, slots=True)
class RemoteUpload:
    """``UploadRead`` (or ``UploadSummary``, without files)."""

    id: str
    status: str
    study_instance_uid: str
    study_hash: str
    chunk_size: int
    file_count: int
    instance_count: int | None
    total_bytes: int
    received_bytes: int
    files: tuple[RemoteFile, ...]
    # None when the study is not queued for a PACS (or in an UploadSummary).
    forwarding: RemoteForwarding | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteUpload:
        instance_count = data.get("instance_count")
        forwarding = data.get("forwarding")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            study_instance_uid=str(data.get("study_instance_uid", "")),
            study_hash=str(data.get("study_hash", "")),
            chunk_size=int(data.get("chunk_size", 0)),
            file_count=int(data.get("file_count", 0)),
            instance_count=None if instance_count is None else int(instance_count),
            total_bytes=int(data.get("total_bytes", 0)),
            received_bytes=int(data.get("received_bytes", 0)),
            files=tuple(RemoteFile.from_json(f) for f in data.get("files") or ()),
            forwarding=RemoteForwarding.from_json(forwarding)
            if isinstance(forwarding, Mapping)
            else None,
        )

    @property
    def missing_chunks(self) -> list[tuple[int, int]]:
        """Every (file_index, chunk_index) the server still needs."""
        return [(f.index, c) for f in self.files for c in f.missing_chunks]


class StartOutcome(StrEnum):
    CREATED = "created"  # 201
    RESUMED = "resumed"  # 200: the same study in progress for this user
    ALREADY_DELIVERED = "already_delivered"  # 409 study_already_delivered


@dataclass(frozen=True, slots=True)
class StartResult:
    outcome: StartOutcome
    upload: RemoteUpload


@dataclass(frozen=True, slots=True)
class ChunkReceipt:
    file_index: int
    chunk_index: int
    size: int
    already_stored: bool


def content_md5(data: bytes) -> str:
    """RFC 1864 Content-MD5: base64 of the MD5 digest (an integrity check, not security)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def api_error(response: httpx.Response) -> ApiError:
    """Turn an error answer into ApiError, whatever its body."""
    code = f"http_{response.status_code}"
    message = response.reason_phrase or "error"
    details: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
        if isinstance(error.get("details"), dict):
            details = error["details"]
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    return ApiError(response.status_code, code, message, details)


def _note_missing_sniffio() -> None:
    """httpcore asks sniffio which event loop runs, a few times per request; anyio 4 no longer
    installs sniffio, and a failed import is not remembered: every look-up searches sys.path
    again (~50 us each, about a sixth of the client's CPU per chunk). Record once that it is
    missing (``None`` in sys.modules: the import fails at once), as it would fail anyway."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


class GatewayClient:
    """The gateway API for one user. Use as ``async with GatewayClient(...) as client``."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        _note_missing_sniffio()
        self._http = httpx.AsyncClient(
            base_url=self.base_url + API_PREFIX,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            http1=True,
            http2=False,
            transport=transport,
            headers={"User-Agent": "relaypacs-upload/1"},
        )
        self._token: str | None = None
        self._token_generation = 0
        self._login_lock = asyncio.Lock()
        self.retries_done = 0

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport ------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
    ) -> httpx.Response:
        """Send with retries; return the first answer that is not worth retrying."""
        relogged = False
        attempt = 0
        while True:
            request_headers = dict(headers or {})
            generation = self._token_generation
            if authenticated:
                if self._token is None:
                    await self._relogin(generation)
                    generation = self._token_generation
                request_headers["Authorization"] = f"Bearer {self._token}"
            failure: str
            retry_after: float | None = None
            try:
                response = await self._http.request(
                    method, path, json=json, content=content, headers=request_headers
                )
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code == 401 and authenticated and not relogged:
                    relogged = True
                    await self._relogin(generation)
                    continue
                if response.status_code == 401 and authenticated:
                    raise AuthenticationError("the server refused a freshly issued token")
                if response.status_code not in RETRYABLE_STATUS:
                    return response
                failure = f"HTTP {response.status_code} {api_error(response).code}"
                retry_after = parse_retry_after(response)
            attempt += 1
            if attempt > self.retry.retries:
                raise ServerUnreachableError(
                    f"{method} {path}: gave up after {self.retry.retries} retries ({failure})"
                )
            delay = self.retry.delay(attempt, retry_after)
            log.debug("%s %s failed (%s); retry %d in %.1fs", method, path, failure, attempt, delay)
            self.retries_done += 1
            await self._sleep(delay)

    async def _relogin(self, generation: int) -> None:
        async with self._login_lock:
            # Another request may have logged in again while we waited for the lock.
            if self._token is not None and self._token_generation != generation:
                return
            await self.login()

    # -- endpoints ------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        response = await self._send("GET", "/health", authenticated=False)
        return self._json_or_raise(response, 200)

    async def login(self) -> None:
        """``POST /auth/login``; AuthenticationError when the credentials are refused."""
        response = await self._send(
            "POST",
            "/auth/login",
            json={"username": self._username, "password": self._password},
            authenticated=False,
        )
        if response.status_code in (400, 401, 403, 422):
            error = api_error(response)
            raise AuthenticationError(f"login refused: {error.message} ({error.code})")
        body = self._json_or_raise(response, 200)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise ClientError("login answer without an access token")
        self._token = token
        self._token_generation += 1

    async def me(self) -> dict[str, Any]:
        return self._json_or_raise(await self._send("GET", "/auth/me"), 200)

    async def start_upload(self, manifest: Mapping[str, Any]) -> StartResult:
        """``POST /uploads``: a new upload, the one in progress, or the delivered one."""
        response = await self._send("POST", "/uploads", json=manifest)
        if response.status_code == 201:
            return StartResult(StartOutcome.CREATED, RemoteUpload.from_json(response.json()))
        if response.status_code == 200:
            return StartResult(StartOutcome.RESUMED, RemoteUpload.from_json(response.json()))
        error = self._raise_for_auth(response)
        if error.code == "study_already_delivered" and isinstance(
            error.details.get("upload"), dict
        ):
            existing = RemoteUpload.from_json(error.details["upload"])
            return StartResult(StartOutcome.ALREADY_DELIVERED, existing)
        raise error

    async def get_upload(self, upload_id: str, *, files: bool = True) -> RemoteUpload:
        """The upload; with ``files=False`` without its file list (cheap to poll)."""
        path = f"/uploads/{upload_id}" if files else f"/uploads/{upload_id}?files=false"
        response = await self._send("GET", path)
        return RemoteUpload.from_json(self._json_or_raise(response, 200))

    async def put_chunk(
        self, upload_id: str, file_index: int, chunk_index: int, data: bytes, *, md5: str = ""
    ) -> ChunkReceipt:
        """``PUT`` one chunk with its Content-MD5 (``md5``, computed here when not given);
        ApiError for a refused chunk."""
        response = await self._send(
            "PUT",
            f"/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}",
            content=data,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-MD5": md5 or content_md5(data),
            },
        )
        body = self._json_or_raise(response, 200)
        return ChunkReceipt(
            file_index=int(body.get("file_index", file_index)),
            chunk_index=int(body.get("chunk_index", chunk_index)),
            size=int(body.get("size", len(data))),
            already_stored=bool(body.get("already_stored", False)),
        )

    async def complete_upload(self, upload_id: str) -> RemoteUpload:
        """``POST /uploads/{id}/complete``; ApiError ``upload_incomplete`` (409, with
        ``details.missing``) or ``upload_rejected`` (422, with ``details.files``)."""
        response = await self._send("POST", f"/uploads/{upload_id}/complete")
        if response.status_code in (200, 202):
            return RemoteUpload.from_json(response.json())
        raise self._raise_for_auth(response)

    async def cancel_upload(self, upload_id: str) -> RemoteUpload:
        response = await self._send("DELETE", f"/uploads/{upload_id}")
        return RemoteUpload.from_json(self._json_or_raise(response, 200))

    # -- helpers --------------------------------------------------------------------------

    def _raise_for_auth(self, response: httpx.Response) -> ApiError:
        """The ApiError of an error answer; a 403 is raised as AuthenticationError."""
        error = api_error(response)
        if response.status_code == 403:
            raise AuthenticationError(f"not allowed: {error.message} ({error.code})")
        return error

    def _json_or_raise(self, response: httpx.Response, expected: int) -> dict[str, Any]:
        if response.status_code != expected:
            raise self._raise_for_auth(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise ClientError(f"{response.request.url.path}: answer is not JSON") from exc
        if not isinstance(body, dict):
            raise ClientError(f"{response.request.url.path}: unexpected answer")
        return body
