"""The settings of operations (relaypacs/telemetry, relaypacs/ops): logs, metrics, error
reports, health checks, and the scheduled jobs (relaypacs/jobs.py) and their periods."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from relaypacs.config.base import SettingsBase


class OperationsSettings(SettingsBase):
    """The settings of operations (see the module)."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json`: one JSON object per log line, for log shippers."
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that Prometheus sends to read /metrics. Default: none, and "
        "then /metrics answers only clients on the loopback interface.",
    )
    sentry_dsn: SecretStr | None = Field(
        default=None, description="Report unexpected errors to Sentry (scrubbed of patient data)."
    )
    sentry_environment: str = Field(default="production", max_length=64)
    sentry_traces_sample_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of requests traced to Sentry."
    )
    audit_head_log_minutes: float = Field(
        default=60,
        gt=0,
        description="How often the audit chain's head (id and hash of the newest record) is "
        "written to the log, for `relaypacs audit verify --head` to detect a truncation.",
    )
    # The periods of the scheduled jobs (relaypacs/jobs.py): each runs on one replica per period.
    stored_chunks_check_minutes: float = Field(
        default=60,
        gt=0,
        description="How often the chunks of unfinished uploads are checked against the object "
        "storage: chunks it lost (restored from an older copy, emptied) are asked for again.",
    )
    scheduler: bool = Field(default=True, description="Take part in running scheduled jobs.")
    scheduler_lease_seconds: float = Field(
        default=60, ge=1, description="A run's hold on its job; a dead replica's runs out."
    )
    upload_expire_hours: float = Field(
        default=24, gt=0, description="An unfinished upload with no chunk for this long expires."
    )
    upload_expiry_check_minutes: float = Field(default=15, gt=0)
    retention_days: float = Field(
        default=7, gt=0, description="The stored bytes of a delivered study are deleted after."
    )
    retention_check_minutes: float = Field(default=60, gt=0)
    sweep_minutes: float = Field(
        default=60, gt=0, description="Expired sessions, tokens and revocations are deleted."
    )
    read_notification_days: float = Field(default=30, gt=0)
    daily_stats_minutes: float = Field(default=60, gt=0)
    health_timeout_seconds: float = Field(
        default=0.8,
        gt=0,
        le=10,
        description="How long each readiness check waits for its dependency.",
    )
