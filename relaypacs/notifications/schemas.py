"""The notification domain's answer shapes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class NotificationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str = Field(
        description="upload_received, upload_validated, upload_rejected, upload_expired, "
        "upload_delivered, upload_failed, report_assigned, report_ready, report_amended"
    )
    related_id: uuid.UUID | None = Field(description="The upload or report it is about.")
    payload: dict[str, Any] = Field(description="Ids and counts; never patient data.")
    is_read: bool
    created_at: dt.datetime


class NotificationList(BaseModel):
    items: list[NotificationRead]
    total: int
    unread: int


class ReadAll(BaseModel):
    marked: int = Field(description="How many were unread.")


class StreamTicket(BaseModel):
    ticket: str = Field(
        description="Opens one stream: GET /notifications/stream?ticket=... within "
        "`expires_in` seconds, once."
    )
    expires_in: int


# The kinds of notice that may also be emailed.
EmailKind = Literal[
    "report_ready", "report_amended", "upload_failed", "upload_rejected", "upload_expired"
]
EMAIL_KINDS: tuple[EmailKind, ...] = (
    "report_ready",
    "report_amended",
    "upload_failed",
    "upload_rejected",
    "upload_expired",
)


class Preferences(BaseModel):
    email: dict[EmailKind, bool] = Field(
        description="Each kind of notice that may be emailed, and whether it is (default: yes; "
        "only where the gateway has SMTP and the user an address)."
    )


class PreferencesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: dict[EmailKind, StrictBool] = Field(description="The kinds to change; others stay.")
