"""The notification domain's answer shapes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class NotificationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str = Field(
        description="upload_delivered, upload_failed, report_assigned, report_ready, report_amended"
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
