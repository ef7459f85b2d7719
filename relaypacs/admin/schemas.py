"""The shapes of the administration console's own answers: the PACS targets and their health.
(Uploads, the audit log and users answer with their domains' shapes.)"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

BreakerState = Literal["closed", "open", "half_open", "not_running"]
AttemptOutcome = Literal["delivered", "failed", "retrying"]


class TargetHealth(BaseModel):
    """One configured PACS target: whether it answers now, its circuit breaker, its queue and
    its last outcomes. No study or patient: counts, times and the PACS's last error."""

    name: str
    url: str = Field(description="The DICOMweb base URL, without any credentials in it.")
    profile: str
    default: bool = Field(description="New studies go to this target.")
    reachable: bool = Field(description="It answered the probe just made (QIDO-RS, limit 1).")
    probe_error: str | None = Field(description="Why it did not, when it did not.")
    breaker: BreakerState = Field(
        description="This replica's circuit breaker for the target (`not_running` when this "
        "process runs no forwarding worker)."
    )
    breaker_retry_seconds: float | None = Field(
        description="While open: seconds until the breaker lets one request through."
    )
    queued_jobs: int = Field(description="Studies waiting to be sent or verified.")
    retrying_jobs: int = Field(description="Of those, waiting again after a failed attempt.")
    oldest_job_age_seconds: float | None = Field(
        description="How long the oldest waiting study has waited (None: nothing waits)."
    )
    last_delivered_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_attempt_outcome: AttemptOutcome | None
    last_error: str | None = Field(description="The PACS's last error, while a study retries.")


class TargetHealthList(BaseModel):
    items: list[TargetHealth]
    checked_at: dt.datetime
