"""The exception tree of the upload client, documented in one place.

ClientError
 +-- InputError             an input path or archive cannot be used (usage error)
 |    +-- UnsafeArchiveError   zip-slip, zip bomb, encrypted or malformed archive
 +-- AuthenticationError    login refused, or the token refused again after a fresh login
 |    +-- SecondFactorError      TOTP: the code was refused, or one is needed and none can be had
 |    +-- EnrolmentRequiredError the account must first enrol TOTP (or change its password)
 +-- ServerUnreachableError network errors, timeouts or 5xx until the retries ran out
 |    +-- RateLimitedError       429 for longer than we wait (Retry-After is in the message)
 +-- ApiError               any other error answer of the gateway (status + stable code)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ClientError",
    "EnrolmentRequiredError",
    "ExitCode",
    "InputError",
    "RateLimitedError",
    "SecondFactorError",
    "ServerUnreachableError",
    "UnsafeArchiveError",
    "api_error",
]


class ExitCode:
    """Exit codes of ``relaypacs upload`` (documented in its ``--help``)."""

    OK = 0
    REJECTED = 1
    USAGE = 2
    UNREACHABLE = 3
    AUTH = 4
    NOT_DELIVERED = 5  # --wait: the PACS refused some instance, or forwarding was cancelled
    PARTIAL = 6  # a study was accepted without some of its files (each named, with its code)


class ClientError(Exception):
    """Base class of every error raised by relaypacs.client."""


class InputError(ClientError):
    """An input path cannot be used."""


class UnsafeArchiveError(InputError):
    """A ZIP archive was refused before anything was written outside its directory."""


class AuthenticationError(ClientError):
    """The gateway refused our credentials (or our fresh token)."""


class SecondFactorError(AuthenticationError):
    """The TOTP step failed: a wrong (or used) code, or a code is needed and none was given
    (not on a terminal, or the given one is used up)."""


class EnrolmentRequiredError(AuthenticationError):
    """The password was right, but the account may not upload until its user has enrolled
    TOTP (or changed a temporary password) in the web app."""


class ServerUnreachableError(ClientError):
    """The gateway could not be reached, or kept failing, until the retries ran out.

    Everything the server acknowledged is durable there: running the upload again resumes.
    """


class RateLimitedError(ServerUnreachableError):
    """The gateway kept answering 429 (or asked to wait longer than we do)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiError(ClientError):
    """An error answer of the gateway: ``{"error": {"code", "message", "details"}}``."""

    def __init__(
        self, status_code: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}


def most_serious(
    group: BaseExceptionGroup[BaseException], order: tuple[type[BaseException], ...]
) -> BaseException:
    """The error of `group` (nested groups flattened) that comes first in `order`: the one the
    user must hear of when several parallel tasks failed; else the first."""
    leaves: list[BaseException] = []

    def flatten(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                flatten(inner)
        else:
            leaves.append(error)

    flatten(group)
    for kind in order:
        for error in leaves:
            if isinstance(error, kind):
                return error
    return leaves[0]


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
