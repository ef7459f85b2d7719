"""Async client of the gateway's HTTP API (docs/api.md): login, uploads, chunks, complete.

``GatewayClient`` is the API's endpoints, on top of the signed-in session
(``relaypacs.client.session``: sign-in, second factor, token renewal, logout), itself on top
of the request plumbing (``relaypacs.client.transport``: one ``httpx.AsyncClient``, retries on
network errors, timeouts, 408/425/429/5xx with backoff). The names those modules define are
importable from here too, as they were before the split.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from relaypacs.client.errors import ClientError, api_error
from relaypacs.client.link import content_digest_of
from relaypacs.client.remote import (
    BatchPartReceipt,
    ChunkReceipt,
    RemoteFile,
    RemoteForwarding,
    RemoteUpload,
    StartOutcome,
    StartResult,
)
from relaypacs.client.session import (
    CODE_ATTEMPTS,
    LOGOUT_TIMEOUT,
    REFRESH_MARGIN_FRACTION,
    REFRESH_MARGIN_MAX,
    CodePrompt,
    SignedInSession,
    second_factor_field,
)
from relaypacs.client.transport import (
    API_PREFIX,
    AUTH_RATE_LIMIT_MAX_WAIT,
    AUTH_RATE_LIMIT_RETRIES,
)

__all__ = [
    "API_PREFIX",
    "AUTH_RATE_LIMIT_MAX_WAIT",
    "AUTH_RATE_LIMIT_RETRIES",
    "BATCH_MEDIA_TYPE",
    "BATCH_PREFIX",
    "CODE_ATTEMPTS",
    "LOGOUT_TIMEOUT",
    "REFRESH_MARGIN_FRACTION",
    "REFRESH_MARGIN_MAX",
    "BatchPartReceipt",
    "ChunkReceipt",
    "CodePrompt",
    "GatewayClient",
    "RemoteFile",
    "RemoteForwarding",
    "RemoteUpload",
    "StartOutcome",
    "StartResult",
    "second_factor_field",
]

# A chunk batch's framing (docs/api.md): the header's length in 4 bytes, big-endian.
BATCH_PREFIX = struct.Struct(">I")
BATCH_MEDIA_TYPE = "application/vnd.relaypacs.chunk-batch"


class GatewayClient(SignedInSession):
    """The gateway API for one user. Use as ``async with GatewayClient(...) as client``.

    Constructed as its SignedInSession (credentials, second factor, timeouts, retries)."""

    async def health(self) -> dict[str, Any]:
        response = await self._send("GET", "/health", authenticated=False)
        return self._json_or_raise(response, 200)

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
        self,
        upload_id: str,
        file_index: int,
        chunk_index: int,
        data: bytes,
        *,
        digest: str = "",
    ) -> ChunkReceipt:
        """``PUT`` one chunk with its Content-Digest (``digest``, computed here when not
        given): SHA-256, which the server also takes as the file's when the chunk is the whole
        file. ApiError for a refused chunk. Measured in ``link``."""
        self.link.started()
        acknowledged = 0
        try:
            response = await self._send(
                "PUT",
                f"/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}",
                content=data,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Digest": digest or content_digest_of(data),
                },
                chunk_timeout=self._chunk_timeout,
            )
            body = self._json_or_raise(response, 200)
            acknowledged = len(data)
        finally:
            self.link.finished(acknowledged)
        return ChunkReceipt(
            file_index=int(body.get("file_index", file_index)),
            chunk_index=int(body.get("chunk_index", chunk_index)),
            size=int(body.get("size", len(data))),
            already_stored=bool(body.get("already_stored", False)),
        )

    async def put_chunk_batch(
        self, upload_id: str, parts: Sequence[tuple[int, int, bytes, str]]
    ) -> list[BatchPartReceipt] | None:
        """``POST`` several chunks in one request (a chunk batch, docs/api.md): ``parts`` are
        (file index, chunk index, bytes, hex SHA-256). One receipt per part, in order; None
        when the gateway has no chunk batches (an older one: send the chunks one by one).
        ApiError when the whole batch is refused. Measured in ``link`` like a chunk."""
        header = json.dumps(
            {
                "parts": [
                    {"file_index": f, "chunk_index": c, "size": len(data), "sha256": sha}
                    for f, c, data, sha in parts
                ]
            },
            separators=(",", ":"),
        ).encode()
        body = b"".join(
            [BATCH_PREFIX.pack(len(header)), header, *(data for _, _, data, _ in parts)]
        )
        self.link.started()
        acknowledged = 0
        try:
            response = await self._send(
                "POST",
                f"/uploads/{upload_id}/chunks:batch",
                content=body,
                headers={"Content-Type": BATCH_MEDIA_TYPE},
                chunk_timeout=self._chunk_timeout,
            )
            if response.status_code in (404, 405) and api_error(response).code not in (
                "upload_not_found",
                "chunk_out_of_range",
            ):
                return None  # no such route: a gateway from before chunk batches
            answer = self._json_or_raise(response, 200)
            acknowledged = len(body)
        finally:
            self.link.finished(acknowledged)
        items = answer.get("parts")
        if not isinstance(items, list) or len(items) != len(parts):
            raise ClientError("chunk batch: the answer does not list every part")
        return [
            BatchPartReceipt(
                file_index=int(item.get("file_index", f)),
                chunk_index=int(item.get("chunk_index", c)),
                status=str(item.get("status", "refused")),
                code=item.get("code") if isinstance(item.get("code"), str) else None,
                message=item.get("message") if isinstance(item.get("message"), str) else None,
            )
            for item, (f, c, _, _) in zip(items, parts, strict=True)
        ]

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
