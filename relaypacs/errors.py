"""Domain errors: each carries its HTTP status and machine-readable code; main.py renders them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self


@dataclass(frozen=True)
class Denial:
    """A refused authorisation, recorded in the audit log when the error is rendered."""

    object_type: str | None = None
    object_id: str | None = None
    study_instance_uid: str | None = None
    reason: str = "role"  # role, not_owner, missing


class GatewayError(Exception):
    status_code: int = 400
    code: str = "bad_request"
    message: str = "The request could not be processed."
    # Set on an error that refuses access (another user's object, or a missing one, both the
    # same 404): the handler records it in the audit log with outcome `denied`. Forbidden
    # always is.
    denial: Denial | None = None

    def __init__(
        self, message: str | None = None, *, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details or {}
        self.headers: dict[str, str] = {}

    def denying(
        self,
        object_type: str,
        object_id: object,
        study_instance_uid: str | None = None,
        *,
        reason: str = "not_owner",
    ) -> Self:
        """This error refuses access to that object: audit it as `denied`. A missing object
        is audited too (`reason="missing"`): the same work either way, so that the time of
        the answer does not tell another user's object from a missing one."""
        self.denial = Denial(object_type, str(object_id), study_instance_uid, reason)
        return self


class NotAuthenticated(GatewayError):
    status_code = 401
    code = "not_authenticated"
    message = "A valid access token is required."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.headers = {"WWW-Authenticate": "Bearer"}


class InvalidCredentials(NotAuthenticated):
    code = "invalid_credentials"
    message = "Wrong username or password."


class Forbidden(GatewayError):
    status_code = 403
    code = "forbidden"
    message = "Your role does not allow this action."


class NotFound(GatewayError):
    status_code = 404
    code = "not_found"
    message = "Not found."


class Conflict(GatewayError):
    status_code = 409
    code = "conflict"


class ServiceUnavailable(GatewayError):
    status_code = 503
    code = "service_unavailable"
    message = "A service the gateway depends on is unavailable; try again shortly."


class DatabaseBusy(ServiceUnavailable):
    """The database stayed locked by another connection for longer than a request waits
    (relaypacs.db.LOOKUP_BUSY_SECONDS): refused at once rather than held."""

    code = "database_busy"
    message = "The gateway's database is busy; nothing was lost, try again shortly."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": "2"}
