"""Shapes of the audit log API (administrators)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from relaypacs.fields import Instant, Line, RowId

AUDIT_PAGE_MAX = 500


class AuditQuery(BaseModel):
    """Filters of GET /admin/audit and its export; every one optional, all combined (AND)."""

    model_config = ConfigDict(extra="forbid")

    actor_id: uuid.UUID | None = Field(default=None, description="The user who acted.")
    action: Line | None = Field(default=None, max_length=64, description="e.g. upload.read")
    outcome: Line | None = Field(default=None, max_length=16, description="e.g. denied")
    object_type: Line | None = Field(default=None, max_length=32, description="e.g. upload")
    object_id: Line | None = Field(default=None, max_length=64)
    study_instance_uid: Line | None = Field(default=None, max_length=64)
    since: Instant | None = Field(default=None, description="From (inclusive, with zone).")
    until: Instant | None = Field(default=None, description="To (exclusive, with zone).")


class AuditPage(AuditQuery):
    limit: int = Field(default=100, ge=1, le=AUDIT_PAGE_MAX)
    before: RowId | None = Field(
        default=None, ge=1, description="The `next_before` of the previous page."
    )


class AuditExport(AuditQuery):
    format: Literal["csv", "jsonl"] = "jsonl"


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: dt.datetime
    actor_id: uuid.UUID | None
    actor_role: str | None
    action: str
    outcome: str
    object_type: str | None
    object_id: str | None
    study_instance_uid: str | None
    client_ip: str | None
    details: dict[str, Any]


class AuditEventList(BaseModel):
    items: list[AuditEventRead]
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page."
    )
