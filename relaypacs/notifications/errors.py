"""The errors of the notification domain: each carries its HTTP status and machine-readable
code."""

from __future__ import annotations

from relaypacs.errors import NotFound


class NotificationNotFound(NotFound):
    code = "notification_not_found"
    message = "No such notification."
