"""The signed-in session of the gateway API client: sign-in, second factor, renewal, logout.

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
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from relaypacs.client.errors import (
    AuthenticationError,
    ClientError,
    EnrolmentRequiredError,
    SecondFactorError,
    ServerUnreachableError,
    api_error,
)
from relaypacs.client.link import STALL_TIMEOUT
from relaypacs.client.retry import RetryPolicy
from relaypacs.client.transport import ApiTransport, OutcomeUnknown, error_code, log

__all__ = [
    "CODE_ATTEMPTS",
    "LOGOUT_TIMEOUT",
    "REFRESH_MARGIN_FRACTION",
    "REFRESH_MARGIN_MAX",
    "CodePrompt",
    "SignedInSession",
    "second_factor_field",
]

# Asks the user for a TOTP (or recovery) code with this message; None: no answer.
CodePrompt = Callable[[str], Awaitable[str | None]]

# Wrong codes typed at the prompt before giving up (the gateway limits them per account too).
CODE_ATTEMPTS = 3
# Renew the access token this long before it expires: at most 60 s, a tenth of its lifetime.
REFRESH_MARGIN_MAX = 60.0
REFRESH_MARGIN_FRACTION = 0.1
# Logout at the end is a courtesy: it gets this long.
LOGOUT_TIMEOUT = 5.0


def second_factor_field(value: str) -> str:
    """Which field of ``POST /auth/totp`` a code goes in: six digits are a TOTP code
    (``code``), anything else a recovery code (``recovery_code``, xxxx-xxxx-xxxx-xxxx)."""
    compact = value.strip().replace(" ", "")
    return "code" if len(compact) == 6 and compact.isdigit() else "recovery_code"


class SignedInSession(ApiTransport):
    """The requests of one user, signed in on first need and kept signed in.

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
        super().__init__(
            base_url,
            timeout=timeout,
            stall_timeout=stall_timeout,
            retry=retry,
            max_connections=max_connections,
            transport=transport,
            sleep=sleep,
        )
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
        # time.monotonic() at which the access token expires.
        self._expires_at = float("inf")
        # The newest refresh token; None once sent (it is used up even if no answer came).
        self._refresh_token: str | None = None
        self._auth_lock = asyncio.Lock()
        # (generation, error) of a renewal that failed: the requests queued behind it fail alike.
        self._renew_failure: tuple[int, AuthenticationError] | None = None
        # What happened to the session, for tests and -v: refreshes done, sign-ins done.
        self.refreshes = 0
        self.logins = 0

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
        except OutcomeUnknown as exc:
            log.info("token refresh without an answer (%s): signing in again", exc)
            return False
        except ServerUnreachableError:
            self._refresh_token = token  # it never reached the server: still unused
            raise
        if response.status_code != 200:
            log.info("token refresh refused (%s): signing in again", error_code(response))
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
            except OutcomeUnknown as exc:
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
