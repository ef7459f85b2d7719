"""Errors of user administration, each with its HTTP status and machine-readable code."""

from __future__ import annotations

from relaypacs.errors import Conflict, NotFound


class UserNotFound(NotFound):
    code = "user_not_found"
    message = "No such user."


class SessionNotFound(NotFound):
    code = "session_not_found"
    message = "No such session."


class CannotChangeSelf(Conflict):
    code = "cannot_change_own_account"
    message = "Administrators cannot disable themselves or change their own role."
