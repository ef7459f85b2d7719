"""Errors of the auth domain, each with its HTTP status and machine-readable code."""

from __future__ import annotations

from relaypacs.errors import Conflict, Forbidden, GatewayError, NotAuthenticated


class InvalidLoginRequest(GatewayError):
    status_code = 422
    code = "invalid_request"
    message = "Give either `code` or `recovery_code`."


class UsernameTaken(Conflict):
    code = "username_taken"
    message = "That username is already taken."


class SessionEnded(NotAuthenticated):
    code = "session_ended"
    message = "This session has ended (signed out, password changed or account disabled)."


class InvalidRefreshToken(NotAuthenticated):
    code = "invalid_refresh_token"
    message = "The refresh token is not valid; sign in again."


class RefreshTokenReused(NotAuthenticated):
    code = "refresh_token_reused"
    message = "This refresh token was already used: the session has been ended for safety."


class SessionExpired(NotAuthenticated):
    code = "session_expired"
    message = "The session has expired; sign in again."


class InvalidTotpCode(NotAuthenticated):
    code = "invalid_totp_code"
    message = "The code is wrong, expired or already used."


class WrongTotpCode(GatewayError):
    """A wrong code while signed in (enrolment): the session itself is fine, so not a 401."""

    status_code = 400
    code = "invalid_totp_code"
    message = "The code is wrong, expired or already used."


class PasswordChangeRequired(Forbidden):
    code = "password_change_required"
    message = "Your password is temporary: change it first (POST /api/v1/auth/password)."


class TotpEnrolmentRequired(Forbidden):
    code = "totp_enrolment_required"
    message = "Your role requires a second factor: enrol TOTP first (POST /api/v1/auth/totp/enrol)."


class TotpAlreadyEnabled(Conflict):
    code = "totp_already_enabled"
    message = "TOTP is already set up for this account; an administrator can reset it."


class TotpNotStarted(Conflict):
    code = "totp_not_started"
    message = "Start the enrolment first (POST /api/v1/auth/totp/enrol)."


class WrongPassword(GatewayError):
    status_code = 400
    code = "wrong_password"
    message = "The current password is wrong."


class WeakPassword(GatewayError):
    status_code = 422
    code = "weak_password"
    message = "The new password is too weak."
