"""Two real gateway processes on one PostgreSQL, every job's period short: between them each
job runs at most once per period (their metrics summed, against the time they were up), and
at least twice; the lease rows name a replica and an ok outcome for every job."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from relaypacs.db import Database
from relaypacs.scheduler.models import ScheduledJob
from tests.gateway import run_gateway
from tests.scheduler.conftest import new_postgres_database

PERIOD_SECONDS = 1.2
JOBS = (
    "audit_chain_head",
    "stored_chunks_check",
    "upload_expiry",
    "retention",
    "session_sweep",
    "daily_stats",
    "report_sync",
)


def scheduled_runs(base: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    runs: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "relaypacs_scheduled_runs_total":
                runs[(sample.labels["job"], sample.labels["outcome"])] = sample.value
    return runs


async def test_two_gateway_processes_run_each_job_once_per_period(tmp_path: Path) -> None:
    minutes = str(PERIOD_SECONDS / 60)
    settings = {
        f"RELAYPACS_{name}": minutes
        for name in (
            "AUDIT_HEAD_LOG_MINUTES",
            "STORED_CHUNKS_CHECK_MINUTES",
            "UPLOAD_EXPIRY_CHECK_MINUTES",
            "RETENTION_CHECK_MINUTES",
            "SWEEP_MINUTES",
            "DAILY_STATS_MINUTES",
            "REPORT_SYNC_MINUTES",
        )
    }
    with new_postgres_database() as url, contextlib.ExitStack() as stack:
        env = {**settings, "RELAYPACS_DATABASE_URL": url, "RELAYPACS_AUTO_MIGRATE": "false"}
        began = time.monotonic()  # before either replica could run anything
        bases = [stack.enter_context(run_gateway(tmp_path / f"r{i}", env)) for i in range(2)]
        # Until every job has run at least twice between the two.
        async with asyncio.timeout(90):
            while True:
                totals = [scheduled_runs(base) for base in bases]
                if all(sum(t.get((job, "ok"), 0) for t in totals) >= 2 for job in JOBS):
                    break
                await asyncio.sleep(0.5)
        totals = [scheduled_runs(base) for base in bases]
        up = time.monotonic() - began  # at least as long as any replica was running jobs
        for job in JOBS:
            runs = sum(t.get((job, "ok"), 0) + t.get((job, "failed"), 0) for t in totals)
            assert sum(t.get((job, "failed"), 0) for t in totals) == 0, job
            # One run per period at most, between both: with no lease, each replica would run
            # every job every period, twice this.
            assert runs <= up / PERIOD_SECONDS + 1, (job, runs, up)
        db = Database.open(url)
        try:
            async with db.sessionmaker() as session:
                rows = (await session.scalars(select(ScheduledJob))).all()
        finally:
            await db.close()
    assert {r.name for r in rows} == set(JOBS)
    assert all(r.last_outcome == "ok" and r.lease_owner for r in rows)
