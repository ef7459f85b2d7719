"""The scheduled jobs, wired to their domains: one line each (relaypacs.scheduler runs each on
exactly one replica per period). A new job is one more `scheduler.add(...)` line here."""

from __future__ import annotations

import datetime as dt

from relaypacs.audit.service import log_chain_head
from relaypacs.auth.service import sweep_ended_sessions
from relaypacs.config import Settings
from relaypacs.db import Database
from relaypacs.notifications.service import sweep_read
from relaypacs.reports.objects import sweep_orphans
from relaypacs.reports.service import release_written_back
from relaypacs.reports.sync import sync_reports_from_pacs
from relaypacs.scheduler import Scheduler
from relaypacs.stats.service import store_past_days
from relaypacs.storage import ObjectStorage
from relaypacs.uploads.completion import check_stored_chunks
from relaypacs.uploads.upkeep import expire_abandoned, purge_delivered


def build_scheduler(settings: Settings, db: Database, storage: ObjectStorage) -> Scheduler:
    """Every scheduled job, its period (seconds, from the settings) and what it runs."""
    s = settings
    hour, day = dt.timedelta(hours=1), dt.timedelta(days=1)
    scheduler = Scheduler(db.sessionmaker, lease_seconds=s.scheduler_lease_seconds)
    add = scheduler.add
    add(
        "audit_chain_head",
        s.audit_head_log_minutes * 60,
        lambda: log_chain_head(db.read_sessionmaker),
    )
    add(
        "stored_chunks_check",
        s.stored_chunks_check_minutes * 60,
        lambda: check_stored_chunks(db, storage),
    )
    add(
        "upload_expiry",
        s.upload_expiry_check_minutes * 60,
        lambda: expire_abandoned(db, storage, idle=s.upload_expire_hours * hour),
    )
    add(
        "retention",
        s.retention_check_minutes * 60,
        lambda: retention(db, storage, kept=s.retention_days * day),
    )
    add("session_sweep", s.sweep_minutes * 60, lambda: sweep(db, s))
    add("daily_stats", s.daily_stats_minutes * 60, lambda: store_past_days(db))
    add(
        "report_sync",
        s.report_sync_minutes * 60,
        lambda: sync_reports_from_pacs(sessionmaker=db.sessionmaker, settings=s, storage=storage),
    )
    return scheduler


async def sweep(db: Database, settings: Settings) -> None:
    """Ended sessions and their refresh tokens, revocations that refuse nothing any more (past
    an access token's life), read notifications older than RELAYPACS_READ_NOTIFICATION_DAYS."""
    async with db.sessionmaker() as session, session.begin():
        await sweep_ended_sessions(
            session,
            idle=dt.timedelta(minutes=settings.refresh_idle_minutes),
            token_lifetime=dt.timedelta(minutes=settings.access_token_minutes, seconds=30),
        )
    async with db.sessionmaker() as session, session.begin():
        await sweep_read(session, older_than=dt.timedelta(days=settings.read_notification_days))


async def retention(db: Database, storage: ObjectStorage, *, kept: dt.timedelta) -> None:
    """The stored bytes of studies delivered longer than `kept` ago, then the gateway's copies
    of their reports' versions that the PACS holds (reports.service.release_written_back), then
    the reports' objects that no row names (reports.objects.sweep_orphans)."""
    await purge_delivered(db, storage, kept=kept)
    await release_written_back(db, storage)
    await sweep_orphans(db, storage)
