"""The statistics' answer shapes."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field


class Figures(BaseModel):
    uploads: int = Field(description="Uploads started that day (UTC).")
    bytes: int = Field(description="Their declared bytes.")
    instances: int = Field(description="Instances accepted of them.")
    delivered: int = Field(description="Of them, delivered (PACS confirmed).")
    latency_p50_seconds: float | None = Field(
        description="Median time from complete to PACS confirmed, of those delivered (nearest "
        "rank); null if none was."
    )
    latency_p95_seconds: float | None = Field(description="Its 95th percentile (nearest rank).")
    statuses: dict[str, int] = Field(description="How many are in each upload status now.")
    failures: dict[str, int] = Field(
        description="Refused files by error code (verification's codes; pacs_refused: refused "
        "by the PACS for good)."
    )


class TargetFigures(Figures):
    target: str


class DayFigures(Figures):
    targets: list[TargetFigures] = Field(description="The same per PACS target (queued ones).")


class DayStats(DayFigures):
    day: dt.date
    live: bool = Field(description="Computed now (today, or a day not yet stored).")


class StatsRead(BaseModel):
    days: list[DayStats] = Field(description="Every day of the range, oldest first.")
