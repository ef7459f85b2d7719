"""The settings of reports and notifications: assignment, the reports read back from the
PACS, the viewer's link, the event stream (SSE) and email (SMTP)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from relaypacs.config.base import SettingsBase


class ReportSettings(SettingsBase):
    """The settings of reports and notifications (see the module)."""

    report_auto_assign: bool = Field(
        default=False,
        description="Assign each new report to a radiologist by rule: round robin among the "
        "active radiologists registered for the study's modality (all active radiologists "
        "where none is).",
    )
    report_sync_minutes: float = Field(
        default=5.0,
        gt=0,
        description="How often the scheduler asks each PACS by QIDO-RS for reports (a "
        "Structured Report or an Encapsulated PDF) added to the studies the gateway delivered "
        "whose report is not ready yet.",
    )
    pacs_viewer_url: str | None = Field(
        default=None,
        description="The PACS viewer's URL for one study, with {study_instance_uid} in it, e.g. "
        "http://pacs:8042/stone-webviewer/index.html?study={study_instance_uid}",
    )
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    sse_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A stream is closed after this long (the browser "
        "reconnects with Last-Event-ID).",
    )
    smtp_host: str | None = Field(default=None, description="SMTP server: email is off without.")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_from: str = Field(default="relaypacs@localhost", min_length=3, max_length=320)
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    smtp_retry_delays: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0],
        description="Seconds between the attempts of one email (the last one repeated).",
    )
    smtp_max_attempts: int = Field(
        default=8,
        ge=1,
        description="An email not accepted after this many attempts is marked failed "
        "(logged and audited).",
    )
    smtp_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        description="At most this long between two looks at the email outbox (a replica "
        "finds the emails queued by the others).",
    )

    @field_validator("pacs_viewer_url")
    @classmethod
    def _check_viewer_url(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.startswith(("http://", "https://")):
                raise ValueError("must start with http:// or https://")
            if "{study_instance_uid}" not in value:
                raise ValueError("must hold {study_instance_uid}")
        return value
