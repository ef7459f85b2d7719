"""The daily statistics: computed from the upload domain's records (uploads.upkeep.day_activity)
for each UTC day, stored for past days by the scheduled job, computed live for today (and for
a past day not stored yet), read by administrators (each read audited)."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Sequence

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_alone
from relaypacs.db import Database, utcnow
from relaypacs.stats import repository
from relaypacs.stats.errors import StatsRangeInvalid
from relaypacs.stats.schemas import DayFigures, DayStats, Figures, StatsRead, TargetFigures
from relaypacs.uploads.upkeep import UploadActivity, day_activity

MAX_DAYS = 366


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least p% of them at or below."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _figures(uploads: Iterable[UploadActivity]) -> Figures:
    count = size = instances = delivered = 0
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for u in uploads:
        count += 1
        size += u.total_bytes
        instances += u.instances
        statuses[u.status.value] += 1
        failures.update(u.failures)
        if u.delivered_at is not None:
            delivered += 1
            if u.completed_at is not None:
                latencies.append((u.delivered_at - u.completed_at).total_seconds())
    return Figures(
        uploads=count,
        bytes=size,
        instances=instances,
        delivered=delivered,
        latency_p50_seconds=percentile(latencies, 50),
        latency_p95_seconds=percentile(latencies, 95),
        statuses=dict(sorted(statuses.items())),
        failures=dict(sorted(failures.items())),
    )


def _bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


async def compute_day(db: Database, day: dt.date) -> DayFigures:
    """The figures of one UTC day, of the uploads started that day."""
    activity = await day_activity(db, *_bounds(day))
    by_target: dict[str, list[UploadActivity]] = {}
    for u in activity:
        if u.target is not None:
            by_target.setdefault(u.target, []).append(u)
    return DayFigures(
        **_figures(activity).model_dump(),
        targets=[
            TargetFigures(target=target, **_figures(uploads).model_dump())
            for target, uploads in sorted(by_target.items())
        ],
    )


async def store_day(db: Database, day: dt.date) -> DayFigures:
    """Compute one day's figures and store them (replacing any stored before)."""
    figures = await compute_day(db, day)
    async with db.sessionmaker() as session, session.begin():
        await repository.store(session, day, figures.model_dump(mode="json"))
    return figures


async def store_past_days(db: Database, *, days: int = 2) -> list[dt.date]:
    """The scheduled job: compute and store the last `days` whole days (again: a delivery
    that came late changes its day's figures)."""
    today = utcnow().date()
    stored = [today - dt.timedelta(days=back) for back in range(days, 0, -1)]
    for day in stored:
        await store_day(db, day)
    return stored


async def read_range(
    db: Database, *, actor: Actor, first: dt.date | None, last: dt.date | None
) -> StatsRead:
    """Every day of [first, last] (default: the last 7 days, today included); stored days as
    stored, today and days not stored computed now. The read is audited."""
    today = utcnow().date()
    last = min(last or today, today)
    first = first or last - dt.timedelta(days=6)
    if first > last or (last - first).days >= MAX_DAYS:
        raise StatsRangeInvalid(details={"from": first.isoformat(), "to": last.isoformat()})
    async with db.read_sessionmaker() as session, session.begin():
        stored = {
            row.day: row.figures for row in await repository.days_between(session, first, last)
        }
    days = []
    for offset in range((last - first).days + 1):
        day = first + dt.timedelta(days=offset)
        if day < today and day in stored:
            days.append(DayStats(day=day, live=False, **DayFigures(**stored[day]).model_dump()))
        else:
            days.append(DayStats(day=day, live=True, **(await compute_day(db, day)).model_dump()))
    await record_alone(
        db.sessionmaker,
        actor=actor,
        action="admin.stats_read",
        object_type="stats",
        details={"from": first.isoformat(), "to": last.isoformat()},
    )
    return StatsRead(days=days)
