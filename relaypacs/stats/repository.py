"""Every query of `daily_stat`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.db import utcnow
from relaypacs.stats.models import DailyStat


async def days_between(session: AsyncSession, first: dt.date, last: dt.date) -> Sequence[DailyStat]:
    return (
        await session.scalars(
            select(DailyStat).where(DailyStat.day >= first, DailyStat.day <= last)
        )
    ).all()


async def store(session: AsyncSession, day: dt.date, figures: dict[str, Any]) -> None:
    """The day's figures, replacing any computed before."""
    await session.execute(delete(DailyStat).where(DailyStat.day == day))
    session.add(DailyStat(day=day, figures=figures, computed_at=utcnow()))
    await session.flush()
