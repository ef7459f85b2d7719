"""The recording proxy: a reverse proxy on 127.0.0.1 in front of any HTTP server that forwards
every request byte for byte and records what passed (one :class:`ProxyRecord` a request)."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from tests.pacs.dicomweb import MultipartReader, PartInfo, parse_content_type, stow_path
from tests.pacs.loopback import (
    HEAD_LIMIT,
    BackgroundServer,
    Head,
    iter_body,
    read_head,
    response_has_body,
    response_head,
)

_KEEP_RESPONSE: Final = 1 << 20


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
        return stow_path(self.method, self.path)

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


class RecordingProxy(BackgroundServer):
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

    def _counted(self, stow: bool) -> int:
        """:meth:`wait_for` waits until ``count`` (STOW-RS) requests have been answered."""
        return sum(1 for r in self.records if r.finished is not None and (r.is_stow or not stow))

    # -- proxying ----------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await read_head(reader)
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
                            self.upstream_host, self.upstream_port, limit=HEAD_LIMIT
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
        head: Head,
        record: ProxyRecord,
    ) -> None:
        async for _ in iter_body(reader, head):
            pass
        body = b"upstream unreachable\n"
        record.status = 502
        record.finished = time.monotonic()
        writer.write(
            response_head(
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
        head: Head,
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
            async for wire, payload in iter_body(reader, head):
                record.request_bytes += len(payload)
                if multipart is not None:
                    multipart.feed(payload)
                up_writer.write(wire)
                await up_writer.drain()
            await up_writer.drain()
            record.request_complete = True
            if multipart is not None:
                record.parts = multipart.parts

        async def relay_response() -> Head:
            # The record is complete before the client can see the end of the response.
            while True:
                response = await read_head(up_reader)
                if response is None:
                    raise ConnectionResetError("upstream closed without answering")
                code = int(response.start_line.split(" ")[1])
                if not (100 <= code < 200) or code == 101:
                    break
                writer.write(response.raw)  # an interim response (100 Continue)
            record.status = code
            record.response_headers = {k.lower(): v for k, v in response.headers}
            held = response.raw
            if response_has_body(record.method, code):
                framed = response.chunked or response.content_length is not None
                async for wire, payload in iter_body(up_reader, response, to_eof=not framed):
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
