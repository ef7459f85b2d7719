"""Domain errors: each carries its HTTP status and machine-readable code; main.py renders them."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status_code: int = 400
    code: str = "bad_request"
    message: str = "The request could not be processed."

    def __init__(
        self, message: str | None = None, *, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details or {}
        self.headers: dict[str, str] = {}


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
