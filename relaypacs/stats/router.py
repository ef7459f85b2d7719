"""HTTP endpoint of the daily statistics (administrators)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query

from relaypacs.auth.dependencies import ActorDep, AdminUser
from relaypacs.state import AppStateDep
from relaypacs.stats import service
from relaypacs.stats.schemas import StatsRead

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/stats", response_model=StatsRead)
async def daily_stats(
    _admin: AdminUser,
    actor: ActorDep,
    state: AppStateDep,
    first: Annotated[dt.date | None, Query(alias="from")] = None,
    last: Annotated[dt.date | None, Query(alias="to")] = None,
) -> StatsRead:
    """Per UTC day of [from, to] (dates, default the last 7 days; at most 366): uploads started,
    bytes, instances, delivered, delivery latency P50/P95 (complete to PACS confirmed), upload
    statuses, failure reasons, and the same per target. Past days as the daily job stored them,
    today live."""
    return await service.read_range(state.db, actor=actor, first=first, last=last)
