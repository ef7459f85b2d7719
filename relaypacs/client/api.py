"""Async client of the gateway's HTTP API (docs/api.md): login, uploads, chunks, complete.

One ``httpx.AsyncClient`` (HTTP/1.1 keep-alive) per GatewayClient. Every request is retried
on network errors, timeouts, 408/425/429/5xx (Retry-After honoured) with exponential backoff and
jitter.

Authentication: the password step (``POST /auth/login``), then, for an account with TOTP, the
code step (``POST /auth/totp``) with the code given, or one asked for (``ask_code``). The
access token is renewed with the refresh token shortly before it expires, and on a 401: once,
under a lock, however many requests found it stale at the same time; the refresh token rotates,
so the newest one is kept and none is ever sent twice (a reuse ends the session on the server).
Only when the refresh fails does the client sign in again from the start.

No token, password or code is ever logged: secrets travel in bodies and headers, never in a
URL (httpx logs URLs at INFO).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from relaypacs.client.errors import (
    ApiError,
    AuthenticationError,
    ClientError,
    EnrolmentRequiredError,
    RateLimitedError,
    SecondFactorError,
    ServerUnreachableError,
    api_error,
)
from relaypacs.client.link import (
    STALL_TIMEOUT,
    LinkMeter,
    content_digest_of,
    pieces,
)
from relaypacs.client.remote import (
    BatchPartReceipt,
    ChunkReceipt,
    RemoteFile,
    RemoteForwarding,
    RemoteUpload,
    StartOutcome,
    StartResult,
)
from relaypacs.client.retry import RETRYABLE_STATUS, RetryPolicy, parse_retry_after

__all__ = [
    "API_PREFIX",
    "BatchPartReceipt",
    "ChunkReceipt",
    "CodePrompt",
    "GatewayClient",
    "RemoteFile",
    "RemoteForwarding",
    "RemoteUpload",
    "StartOutcome",
    "StartResult",
]

API_PREFIX = "/api/v1"
# A chunk batch's framing (docs/api.md): the header's length in 4 bytes, big-endian.
BATCH_PREFIX = struct.Struct(">I")
BATCH_MEDIA_TYPE = "application/vnd.relaypacs.chunk-batch"
log = logging.getLogger(__name__)

# Asks the user for a TOTP (or recovery) code with this message; None: no answer.
CodePrompt = Callable[[str], Awaitable[str | None]]

# Sign-in answering 429: wait Retry-After up to this long, at most this many times, then stop
# with RateLimitedError (a person or a script is waiting; the limit is per account).
AUTH_RATE_LIMIT_MAX_WAIT = 60.0
AUTH_RATE_LIMIT_RETRIES = 3
# Wrong codes typed at the prompt before giving up (the gateway limits them per account too).
CODE_ATTEMPTS = 3
# Renew the access token this long before it expires: at most 60 s, a tenth of its lifetime.
REFRESH_MARGIN_MAX = 60.0
REFRESH_MARGIN_FRACTION = 0.1
# Logout at the end is a courtesy: it gets this long.
LOGOUT_TIMEOUT = 5.0
# Transport errors after which the request surely did not reach the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _code(response: httpx.Response) -> str:
    """The error code of an answer, for a log line (never its body)."""
    return api_error(response).code


def _note_missing_sniffio() -> None:
    """httpcore asks sniffio which event loop runs, a few times per request; anyio 4 no longer
    installs sniffio, and a failed import is not remembered: every look-up searches sys.path
    again (~50 us each, about a sixth of the client's CPU per chunk). Record once that it is
    missing (``None`` in sys.modules: the import fails at once), as it would fail anyway."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


class _OutcomeUnknown(ClientError):
    """A request that must not be sent twice got no usable answer: it may have been done."""


def second_factor_field(value: str) -> str:
    """Which field of ``POST /auth/totp`` a code goes in: six digits are a TOTP code
    (``code``), anything else a recovery code (``recovery_code``, xxxx-xxxx-xxxx-xxxx)."""
    compact = value.strip().replace(" ", "")
    return "code" if len(compact) == 6 and compact.isdigit() else "recovery_code"


class GatewayClient:
    """The gateway API for one user. Use as ``async with GatewayClient(...) as client``.

    ``totp_code`` (a TOTP or recovery code, told apart by their form) or ``recovery_code`` is
    used for the first sign-in of an account with TOTP; a later one (the session ended) needs
    a fresh code from ``ask_code``, else fails with SecondFactorError.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str,
        totp_code: str | None = None,
        recovery_code: str | None = None,
        ask_code: CodePrompt | None = None,
        refresh_margin: float | None = None,
        renew_early: bool = True,
        timeout: float = 60.0,
        stall_timeout: float = STALL_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._username = username
        self._password = password
        # The code given up front: (field of POST /auth/totp, value), used at most once.
        self._given_code: tuple[str, str] | None = None
        if recovery_code:
            self._given_code = ("recovery_code", recovery_code.strip())
        elif totp_code:
            self._given_code = (second_factor_field(totp_code), totp_code.strip())
        self._given_code_used = False
        self._ask_code = ask_code
        # Renew this many seconds before the token expires (None: REFRESH_MARGIN_*); with
        # renew_early=False only on a 401.
        self._refresh_margin = refresh_margin
        self._renew_early = renew_early
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
        # time.monotonic() at which the access token should be renewed, and when it expires.
        self._renew_at = float("inf")
        self._expires_at = float("inf")
        # The newest refresh token; None once sent (it is used up even if no answer came).
        self._refresh_token: str | None = None
        self._token_generation = 0
        self._auth_lock = asyncio.Lock()
        # (generation, error) of a renewal that failed: the requests queued behind it fail alike.
        self._renew_failure: tuple[int, AuthenticationError] | None = None
        self.retries_done = 0
        # What happened to the session, for tests and -v: refreshes done, sign-ins done.
        self.refreshes = 0
        self.logins = 0

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
        chunk_timeout: httpx.Timeout | None = None,
        authenticated: bool = True,
        replayable: bool = True,
        sign_in: bool = False,
    ) -> httpx.Response:
        """Send with retries; return the first answer that is not worth retrying.

        ``replayable=False`` (a refresh token, a TOTP code: used up by the server): resent only
        when it surely did not arrive (connection refused, 429); otherwise _OutcomeUnknown, or
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
                    raise _OutcomeUnknown(f"{method} {path}: no answer ({failure})") from exc
                renewed = False
            else:
                if response.status_code == 401 and authenticated and not renewed:
                    # Expired (or ended): renew once, then send again with the new token.
                    renewed = True
                    log.debug("%s %s: 401 %s; renewing the token", method, path, _code(response))
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

    # -- authentication -------------------------------------------------------------------

    async def _renew(self, generation: int) -> None:
        """A usable access token, after the one of ``generation`` expired or was refused:
        refreshed once for all the requests that found it stale (the others, waiting for the
        lock, then use the new one); a full sign-in only if the refresh fails."""
        async with self._auth_lock:
            if self._token is not None and self._token_generation != generation:
                return  # renewed by another request while this one waited
            failed = self._renew_failure
            if failed is not None and failed[0] == generation:
                # It failed for a request that held the lock before: the same answer, without
                # asking the server (or the user) again for each waiting request.
                raise type(failed[1])(str(failed[1]))
            try:
                if self._refresh_token is not None and await self._refresh():
                    return
                await self._sign_in()
            except AuthenticationError as exc:
                self._renew_failure = (generation, exc)
                raise

    async def _refresh(self) -> bool:
        """``POST /auth/refresh`` with the newest refresh token; False when the session cannot
        be continued (then sign in again). Called under the lock."""
        token, self._refresh_token = self._refresh_token, None  # never sent twice
        try:
            response = await self._send(
                "POST",
                "/auth/refresh",
                json={"refresh_token": token},
                authenticated=False,
                replayable=False,
            )
        except _OutcomeUnknown as exc:
            log.info("token refresh without an answer (%s): signing in again", exc)
            return False
        except ServerUnreachableError:
            self._refresh_token = token  # it never reached the server: still unused
            raise
        if response.status_code != 200:
            log.info("token refresh refused (%s): signing in again", _code(response))
            return False
        body = self._json_or_raise(response, 200)
        self._accept(body)
        self.refreshes += 1
        log.debug("access token refreshed")
        return True

    async def login(self) -> None:
        """Sign in (password, then the second factor when the account has TOTP).

        AuthenticationError when refused: SecondFactorError for the code,
        EnrolmentRequiredError when the account may not upload yet; RateLimitedError."""
        async with self._auth_lock:
            await self._sign_in()

    async def _sign_in(self) -> None:
        response = await self._send(
            "POST",
            "/auth/login",
            json={
                "username": self._username,
                "password": self._password,
                "refresh_in_body": True,
            },
            authenticated=False,
            sign_in=True,
        )
        if response.status_code in (400, 401, 403, 422):
            error = api_error(response)
            raise AuthenticationError(f"login refused: {error.message} ({error.code})")
        body = self._json_or_raise(response, 200)
        if body.get("mfa_required"):
            mfa_token = body.get("mfa_token")
            if not isinstance(mfa_token, str) or not mfa_token:
                raise ClientError("login answer without an mfa_token")
            body = await self._second_factor(mfa_token)
        self._accept(body)
        self.logins += 1

    async def _second_factor(self, mfa_token: str) -> dict[str, Any]:
        """``POST /auth/totp`` with the given code, else codes asked for; the token answer."""
        refused = 0
        while True:
            field, value, typed = await self._next_code(refused)
            try:
                response = await self._send(
                    "POST",
                    "/auth/totp",
                    json={"mfa_token": mfa_token, field: value, "refresh_in_body": True},
                    authenticated=False,
                    replayable=False,
                    sign_in=True,
                )
            except _OutcomeUnknown as exc:
                raise ServerUnreachableError(
                    f"the gateway did not answer the sign-in ({exc}); run again"
                ) from None
            if response.status_code == 200:
                return self._json_or_raise(response, 200)
            error = api_error(response)
            if error.code == "invalid_totp_code" or response.status_code == 422:
                refused += 1
                what = "recovery code" if field == "recovery_code" else "TOTP code"
                # Typed at the prompt: a few tries; given up front: then ask, if we can.
                ask_again = refused < CODE_ATTEMPTS if typed else self._ask_code is not None
                if ask_again:
                    log.info("the %s was refused", what)
                    continue
                raise SecondFactorError(
                    f"the {what} was refused: wrong, expired (a TOTP code changes every 30 s) "
                    "or already used (each code works once) (invalid_totp_code)"
                )
            if response.status_code in (400, 401, 403):
                raise AuthenticationError(
                    f"second factor refused: {error.message} ({error.code}); run again"
                )
            raise ServerUnreachableError(
                f"the gateway failed the sign-in (HTTP {response.status_code} {error.code}); "
                "run again"
            )

    async def _next_code(self, refused: int) -> tuple[str, str, bool]:
        """(field, code, typed at the prompt) for the next attempt of the TOTP step."""
        if self._given_code is not None and not self._given_code_used:
            self._given_code_used = True
            return (*self._given_code, False)
        if self._ask_code is not None:
            prompt = "TOTP code from your authenticator app (or a recovery code)"
            if refused:
                prompt = "That code was refused; another " + prompt[0].lower() + prompt[1:]
            value = await self._ask_code(prompt)
            if value and value.strip():
                return second_factor_field(value), value.strip(), True
            raise SecondFactorError("no TOTP code given")
        if self._given_code is not None:
            raise SecondFactorError(
                "the session ended and signing in again needs a new TOTP code; the one given "
                "(--totp-code, RELAYPACS_TOTP_CODE or --recovery-code) is used up. Run the "
                "command again with a fresh code: the upload resumes where it stopped"
            )
        raise SecondFactorError(
            "this account signs in with a second factor (TOTP): give the current code with "
            "--totp-code or RELAYPACS_TOTP_CODE (or a recovery code with --recovery-code), "
            "or run on a terminal to be asked for it"
        )

    def _accept(self, body: Mapping[str, Any]) -> None:
        """Keep the tokens of a login or refresh answer; then refuse an account that may not
        upload yet (its session is kept, for logout to end it)."""
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise ClientError("login answer without an access token")
        refresh = body.get("refresh_token")
        self._token = token
        self._refresh_token = refresh if isinstance(refresh, str) and refresh else None
        self._token_generation += 1
        now = time.monotonic()
        lifetime = body.get("expires_in")
        if isinstance(lifetime, int | float) and lifetime > 0:
            margin = self._refresh_margin
            if margin is None:
                margin = min(REFRESH_MARGIN_MAX, lifetime * REFRESH_MARGIN_FRACTION)
            self._expires_at = now + lifetime
            self._renew_at = now + max(0.0, lifetime - margin)
            if not self._renew_early:
                self._renew_at = float("inf")
        else:
            self._expires_at = self._renew_at = float("inf")
        if body.get("totp_enrolment_required"):
            raise EnrolmentRequiredError(
                "your role requires a second factor (TOTP) and this account has none yet: "
                "enrol it in the RelayPACS web app (or ask an administrator), then run again "
                "(totp_enrolment_required)"
            )
        if body.get("password_change_required"):
            raise EnrolmentRequiredError(
                "the password of this account is temporary: change it in the RelayPACS web app, "
                "then run again (password_change_required)"
            )

    async def logout(self) -> None:
        """``POST /auth/logout``: end this session (best effort, never raises). With the access
        token while it is valid, else with the refresh token."""
        token, refresh, expires_at = self._token, self._refresh_token, self._expires_at
        self._token = self._refresh_token = None
        self._renew_at = self._expires_at = float("inf")
        headers: dict[str, str] = {}
        body: dict[str, str] | None = None
        if token is not None and time.monotonic() < expires_at - 5.0:
            headers["Authorization"] = f"Bearer {token}"
        elif refresh is not None:
            body = {"refresh_token": refresh}
        else:
            return
        try:
            async with asyncio.timeout(LOGOUT_TIMEOUT):
                response = await self._http.post("/auth/logout", json=body, headers=headers)
            log.debug("logout: HTTP %d", response.status_code)
        except Exception as exc:  # best effort: nothing here may change how the run ended
            log.debug("logout failed (%s); the session expires on its own", type(exc).__name__)

    # -- endpoints ------------------------------------------------------------------------

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
