"""The HTTP surface: security headers, a request id, caps on request headers and bodies and a
last guard against unexpected errors, as one pure ASGI middleware around the whole app.

It sits outside Starlette's ServerErrorMiddleware, so even a 500 gets the headers. Per request it
costs a header scan and one wrapped `send` (the chunk PUT carries hundreds a second).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relaypacs.telemetry import REQUEST_ID, observe_request, report_exception

logger = logging.getLogger("relaypacs.http")
# One line per request: client, route and ids (never the path or query string as sent: a
# client may put anything there), status, duration, request id. It replaces the server's own
# access log.
access_logger = logging.getLogger("relaypacs.access")

# The web app is served by the gateway itself: everything from 'self', nothing inline, no
# framing. (`img-src blob: data:` for previews the app draws itself and the TOTP QR code;
# `'wasm-unsafe-eval'` lets the app's hashing worker compile its WebAssembly SHA-256, and
# allows no JavaScript eval.)
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; worker-src 'self'; "
    "manifest-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HSTS = b"max-age=63072000; includeSubDomains"

# Caps on the request's header block (names and values, as the server parsed them): every header
# the gateway reads is small (a bearer token is under 1 KiB), and without them any size went
# through the app. The server (uvicorn with httptools) has no limit of its own: it has buffered
# the whole block by the time this refuses it (relaypacs/cli/main.py, serve).
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_FIELDS = 100

_COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_HEADERS = (*_COMMON, (b"content-security-policy", CSP.encode()))
_NO_STORE = (b"cache-control", b"no-store")
_HSTS = (b"strict-transport-security", HSTS)
# Request ids: unique per process (a random prefix per process, then a counter), cheap.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


def _frames(exc: BaseException) -> str:
    """Where an exception went through: file, line and function only (no source text, no
    message, no locals: nothing of the data being processed)."""
    return "\n".join(
        f"  {frame.filename}:{frame.lineno} in {frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
    )


class BodyTooLarge(HTTPException):
    """A body without Content-Length (chunked) grew past the cap while being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"A request body may be at most {limit} bytes.")
        self.limit = limit


def error_json(
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]],
    *,
    request_id: str | None = None,
) -> Any:
    """An ASGI response (as a coroutine factory) with the gateway's usual error body."""
    error: dict[str, Any] = {"code": code, "message": message, "details": {}}
    if request_id is not None:
        error["request_id"] = request_id
    body = json.dumps({"error": error}).encode()

    async def respond(send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return respond


class HttpSurface:
    """Security headers and `Cache-Control: no-store` on every response, `X-Request-ID`, a cap on
    the request's headers (431 over `MAX_HEADER_BYTES` or `MAX_HEADER_FIELDS`), a cap on
    request bodies (413 before the body is read when Content-Length says so; while reading for
    chunked bodies), and no traceback out of the process's answers or logs' messages.

    `body_limit(method, path)`: the cap of a request over `max_body` (asked only then): a
    larger one for some routes, or None for a route that checks its own body size before
    reading it (the chunk PUT).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        body_limit: Callable[[str, str], int | None],
        describe: Callable[[Scope], str] = lambda scope: f"{scope['method']} (no route)",
        template: Callable[[Scope], str] = lambda _scope: "(no route)",
        trusted_proxies: Sequence[str] = (),
        docs: tuple[str, str] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.body_limit = body_limit
        self.describe = describe
        self.template = template
        self.trusted_proxies = frozenset(trusted_proxies)
        # The API documentation page (relaypacs/apidocs.py) and its own policy.
        self.docs_path: str | None = docs[0] if docs else None
        docs_csp = docs[1] if docs else ""
        self.docs_headers = (*_COMMON, (b"content-security-policy", docs_csp.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        scope.setdefault("state", {})["request_id"] = request_id
        reset = REQUEST_ID.set(request_id)
        try:
            await self._handle(scope, receive, send, request_id)
        finally:
            REQUEST_ID.reset(reset)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        path: str = scope["path"]
        length: bytes | None = None
        chunked = False
        forwarded_https = False
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"x-forwarded-proto":
                forwarded_https = value == b"https"
        hsts = scope.get("scheme") == "https" or (
            forwarded_https
            and scope.get("client") is not None
            and scope["client"][0] in self.trusted_proxies
        )
        is_api = path.startswith("/api/")
        fixed = self.docs_headers if path == self.docs_path else _HEADERS
        id_header = (b"x-request-id", request_id.encode())

        started = False
        status = 0
        began = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [
                    h for h in message.get("headers", ()) if h[0].lower() != b"cache-control"
                ]
                if is_api or len(headers) == len(message.get("headers", ())):
                    headers.append(_NO_STORE)
                else:  # a non-API response (the web app's assets) keeps its own caching
                    headers = list(message["headers"])
                headers.extend(fixed)
                headers.append(id_header)
                if hsts:
                    headers.append(_HSTS)
                message["headers"] = headers
            await send(message)

        headers_refusal: str | None = None
        if len(scope["headers"]) > MAX_HEADER_FIELDS:
            headers_refusal = f"A request may carry at most {MAX_HEADER_FIELDS} header fields."
        elif header_bytes > MAX_HEADER_BYTES:
            headers_refusal = (
                f"The request's header fields may total at most {MAX_HEADER_BYTES} bytes "
                "(names and values)."
            )
        if headers_refusal is not None:
            await error_json(
                431,
                "request_header_fields_too_large",
                headers_refusal,
                [(b"connection", b"close")],
            )(send_with_headers)
            self._finish(scope, 431, began, request_id)
            return

        if length is not None:
            size = int(length) if length.isdigit() else -1
            refusal: tuple[int, str, str] | None = None
            if size < 0:
                refusal = (400, "bad_request", "The Content-Length header is not valid.")
            elif size > self.max_body:
                limit = self.body_limit(scope["method"], path)
                if limit is not None and size > limit:
                    message = f"A request body may be at most {limit} bytes."
                    refusal = (413, "request_too_large", message)
            if refusal is not None:
                await error_json(*refusal, [(b"connection", b"close")])(send_with_headers)
                self._finish(scope, refusal[0], began, request_id)
                return
        elif chunked:
            limit = self.body_limit(scope["method"], path)
            if limit is not None:
                receive = self._capped(receive, limit)

        try:
            await self.app(scope, receive, send_with_headers)
            self._finish(scope, status, began, request_id)
        except Exception as exc:
            # Logged without the exception's message (it may carry data we must not log),
            # with where it happened.
            logger.error(
                "unexpected error %s in %s (request %s)\n%s",
                type(exc).__name__,
                self.describe(scope),
                request_id,
                _frames(exc),
            )
            report_exception(exc)
            if not started:
                await error_json(
                    500,
                    "internal_error",
                    "An unexpected error occurred; it has been logged.",
                    [],
                    request_id=request_id,
                )(send_with_headers)
            # Every request has its access line, a failed one most of all.
            self._finish(scope, status or 500, began, request_id, always=True)

    def _finish(
        self, scope: Scope, status: int, began: float, request_id: str, *, always: bool = False
    ) -> None:
        """The request's duration in the metrics, and its access line."""
        seconds = time.perf_counter() - began
        observe_request(scope["method"], self.template(scope), status, seconds)
        if always or access_logger.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_logger.info(
                '%s "%s" %d %.1fms %s',
                client[0] if client else "-",
                self.describe(scope),
                status,
                seconds * 1000,
                request_id,
            )

    @staticmethod
    def _capped(receive: Receive, limit: int) -> Receive:
        total = 0

        async def capped() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise BodyTooLarge(limit)
            return message

        return capped


class StrictCORSMiddleware(CORSMiddleware):
    """Starlette's CORS for the configured origins; a request from any other origin gets no CORS
    header at all (Starlette would still answer a refused preflight with its Allow-Methods and
    Allow-Headers), and a preflight from it a 403."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self.is_allowed_origin(origin=origin):
                if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                    await error_json(
                        403,
                        "cors_origin_not_allowed",
                        "This origin may not call the API.",
                        [(b"vary", b"Origin")],
                    )(send)
                    return
                await self.app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
