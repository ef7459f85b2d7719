"""The request plumbing of the gateway API client: one ``httpx.AsyncClient`` and the retries.

One ``httpx.AsyncClient`` (HTTP/1.1 keep-alive) per client. Every request is retried on
network errors, timeouts, 408/425/429/5xx (Retry-After honoured) with exponential backoff and
jitter. An authenticated request carries the access token, renewed first when it is about to
expire and once on a 401: how is the signed-in session's business (``relaypacs.client.session``
implements ``_renew``); the endpoints are in ``relaypacs.client.api``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Self

import httpx

from relaypacs.client.errors import (
    ApiError,
    AuthenticationError,
    ClientError,
    RateLimitedError,
    ServerUnreachableError,
    api_error,
)
from relaypacs.client.link import LinkMeter, pieces
from relaypacs.client.retry import RETRYABLE_STATUS, RetryPolicy, parse_retry_after

__all__ = [
    "API_PREFIX",
    "AUTH_RATE_LIMIT_MAX_WAIT",
    "AUTH_RATE_LIMIT_RETRIES",
    "ApiTransport",
    "OutcomeUnknown",
    "error_code",
]

API_PREFIX = "/api/v1"
# The API client's log lines (this module's, the session's) under the name they always had.
log = logging.getLogger("relaypacs.client.api")

# Sign-in answering 429: wait Retry-After up to this long, at most this many times, then stop
# with RateLimitedError (a person or a script is waiting; the limit is per account).
AUTH_RATE_LIMIT_MAX_WAIT = 60.0
AUTH_RATE_LIMIT_RETRIES = 3
# Transport errors after which the request surely did not reach the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def error_code(response: httpx.Response) -> str:
    """The error code of an answer, for a log line (never its body)."""
    return api_error(response).code


def _note_missing_sniffio() -> None:
    """httpcore asks sniffio which event loop runs, a few times per request; anyio 4 no longer
    installs sniffio, and a failed import is not remembered: every look-up searches sys.path
    again (~50 us each, about a sixth of the client's CPU per chunk). Record once that it is
    missing (``None`` in sys.modules: the import fails at once), as it would fail anyway."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


class OutcomeUnknown(ClientError):
    """A request that must not be sent twice got no usable answer: it may have been done."""


class ApiTransport:
    """Requests to the gateway API with retries, and the access token they carry.

    The token state (``_token``, when to renew it, its generation) is kept here because every
    authenticated request reads it; a subclass (the signed-in session) fills it in and
    implements ``_renew``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        stall_timeout: float,
        retry: RetryPolicy | None,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        # A chunk's body goes out in pieces, each of which (and then the answer) must move
        # within stall_timeout: a link that silently stops is noticed in seconds.
        self._chunk_timeout = httpx.Timeout(
            timeout, connect=min(timeout, 15.0), read=stall_timeout, write=stall_timeout
        )
        self.link = LinkMeter()
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
        # time.monotonic() at which the access token should be renewed.
        self._renew_at = float("inf")
        self._token_generation = 0
        self.retries_done = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _renew(self, generation: int) -> None:
        """A usable access token, after the one of ``generation`` expired or was refused."""
        raise NotImplementedError

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        chunk_timeout: httpx.Timeout | None = None,
        authenticated: bool = True,
        replayable: bool = True,
        sign_in: bool = False,
    ) -> httpx.Response:
        """Send with retries; return the first answer that is not worth retrying.

        ``replayable=False`` (a refresh token, a TOTP code: used up by the server): resent only
        when it surely did not arrive (connection refused, 429); otherwise OutcomeUnknown, or
        the 5xx answer. ``sign_in``: a 429 is waited for only briefly (RateLimitedError).
        An authenticated request renews the token first when it is about to expire, and once
        on a 401."""
        renewed = False
        attempt = 0
        while True:
            request_headers = dict(headers or {})
            generation = self._token_generation
            if authenticated:
                if self._token is None or time.monotonic() >= self._renew_at:
                    await self._renew(generation)
                    generation = self._token_generation
                request_headers["Authorization"] = f"Bearer {self._token}"
            failure: str
            retry_after: float | None = None
            try:
                if chunk_timeout is None:
                    response = await self._http.request(
                        method, path, json=json, content=content, headers=request_headers
                    )
                else:  # a chunk: its body in pieces (each attempt anew), its own timeouts
                    assert content is not None
                    request_headers["Content-Length"] = str(len(content))
                    response = await self._http.request(
                        method,
                        path,
                        content=pieces(content),
                        headers=request_headers,
                        timeout=chunk_timeout,
                    )
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if not replayable and not isinstance(exc, _NOT_SENT):
                    raise OutcomeUnknown(f"{method} {path}: no answer ({failure})") from exc
                renewed = False
            else:
                if response.status_code == 401 and authenticated and not renewed:
                    # Expired (or ended): renew once, then send again with the new token.
                    renewed = True
                    log.debug(
                        "%s %s: 401 %s; renewing the token", method, path, error_code(response)
                    )
                    await self._renew(generation)
                    continue
                if response.status_code == 401 and authenticated:
                    raise AuthenticationError("the server refused a freshly issued token")
                renewed = False
                status = response.status_code
                if status not in RETRYABLE_STATUS or (not replayable and status != 429):
                    return response
                failure = f"HTTP {status} {api_error(response).code}"
                retry_after = parse_retry_after(response)
                if status == 429 and sign_in:
                    self._check_sign_in_limit(attempt, retry_after)
            attempt += 1
            if attempt > self.retry.retries:
                if retry_after is not None and failure.startswith("HTTP 429"):
                    raise RateLimitedError(
                        f"{method} {path}: the gateway still limits our requests after "
                        f"{self.retry.retries} retries ({failure}); run again later",
                        retry_after,
                    )
                raise ServerUnreachableError(
                    f"{method} {path}: gave up after {self.retry.retries} retries ({failure})"
                )
            delay = self.retry.delay(attempt, retry_after)
            log.debug("%s %s failed (%s); retry %d in %.1fs", method, path, failure, attempt, delay)
            self.retries_done += 1
            await self._sleep(delay)

    def _check_sign_in_limit(self, attempt: int, retry_after: float | None) -> None:
        """A sign-in answered 429: raise unless it is worth waiting (briefly) and asking again."""
        wait = AUTH_RATE_LIMIT_MAX_WAIT if retry_after is None else retry_after
        if attempt < min(AUTH_RATE_LIMIT_RETRIES, self.retry.retries) and (
            wait <= AUTH_RATE_LIMIT_MAX_WAIT
        ):
            return
        later = f" in {retry_after:.0f} s" if retry_after is not None else " later"
        raise RateLimitedError(
            "the gateway refuses sign-in attempts for now (too many recent attempts for this "
            f"account or address): try again{later}",
            retry_after,
        )

    # -- answers --------------------------------------------------------------------------

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
