"""The scheduler on a real database (SQLite and PostgreSQL): two replicas run each job once per
period between them, a failure is recorded and tried again next period, and a replica killed
while it holds a lease (a real process, SIGKILL) is taken over once the lease runs out."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from relaypacs.db import Database, utcnow
from relaypacs.scheduler import Job, Scheduler
from relaypacs.scheduler.service import RUN_STARTED

PERIOD = 0.6


@dataclass
class Runs:
    """Each run of a job: which replica, from when to when."""

    spans: list[tuple[str, dt.datetime, dt.datetime]] = field(default_factory=list)

    def recording(
        self, replica: str, work: Callable[[], Awaitable[object]] | None = None
    ) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            began = RUN_STARTED.get()  # when its lease was taken
            try:
                if work is not None:
                    await work()
                await asyncio.sleep(0.05)  # a run takes some time: two at once would overlap
            finally:
                self.spans.append((replica, began, utcnow()))

        return run

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(60):
            while len(self.spans) < count:
                await asyncio.sleep(0.05)


def runs_counted(job: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "relaypacs_scheduled_runs_total", {"job": job, "outcome": outcome}
    )
    return value or 0.0


def once_per_period(spans: list[tuple[str, dt.datetime, dt.datetime]], period: float) -> None:
    """No two runs within one period, and none overlapping another."""
    ordered = sorted(spans, key=lambda span: span[1])
    for (_, began, ended), (_, next_began, _) in itertools.pairwise(ordered):
        assert next_began >= ended
        # A run starts when its UPDATE finds the lease run out: at least a period after the
        # previous start. Two replicas running one period's job would start milliseconds apart.
        assert (next_began - began).total_seconds() >= period


def scheduler(db: Database, name: str, *, lease_seconds: float = 60.0) -> Scheduler:
    return Scheduler(db.sessionmaker, owner=name, poll_seconds=0.1, lease_seconds=lease_seconds)


class TestTwoReplicas:
    async def test_each_job_runs_once_per_period_between_them(
        self, replicas: tuple[Database, Database]
    ) -> None:
        job = f"job_{os.urandom(4).hex()}"
        runs = Runs()
        schedulers = [scheduler(db, f"replica{i}") for i, db in enumerate(replicas)]
        for s in schedulers:
            s.add(job, PERIOD, runs.recording(s.owner))
        await asyncio.gather(*(s.start() for s in schedulers))
        try:
            await runs.wait_for(5)
        finally:
            await asyncio.gather(*(s.stop() for s in schedulers))
        once_per_period(runs.spans, PERIOD)
        assert runs_counted(job, "ok") == len(runs.spans)
        (row,) = [r for r in await schedulers[0].rows() if r.name == job]
        assert row.last_outcome == "ok"
        assert row.lease_owner in ("replica0", "replica1")
        # (The last run may have been cut short by the stop: started, not finished.)
        assert row.last_finished is not None
        assert row.last_started is not None

    async def test_the_real_jobs_run_once_per_period_on_two_replicas(
        self, replicas: tuple[Database, Database], tmp_path: object
    ) -> None:
        """The gateway's own jobs (relaypacs.jobs), every period set short."""
        from pathlib import Path

        from relaypacs.config import Settings
        from relaypacs.jobs import build_scheduler
        from relaypacs.storage import FilesystemStorage

        assert isinstance(tmp_path, Path)
        period_minutes = PERIOD / 60
        settings = Settings(
            data_dir=tmp_path,
            audit_head_log_minutes=period_minutes,
            stored_chunks_check_minutes=period_minutes,
            upload_expiry_check_minutes=period_minutes,
            retention_check_minutes=period_minutes,
            sweep_minutes=period_minutes,
            daily_stats_minutes=period_minutes,
            report_sync_minutes=period_minutes,
        )
        storage = FilesystemStorage(tmp_path / "objects")
        await storage.open()
        runs: dict[str, Runs] = {}
        schedulers = []
        for i, db in enumerate(replicas):
            built = build_scheduler(settings, db, storage)
            built.owner, built.poll_seconds = f"replica{i}", 0.1
            built.jobs = [
                Job(j.name, j.period, runs.setdefault(j.name, Runs()).recording(built.owner, j.run))
                for j in built.jobs
            ]
            schedulers.append(built)
        assert set(runs) == {
            "audit_chain_head",
            "stored_chunks_check",
            "upload_expiry",
            "retention",
            "session_sweep",
            "daily_stats",
            "report_sync",
        }
        failed_before = {name: runs_counted(name, "failed") for name in runs}
        await asyncio.gather(*(s.start() for s in schedulers))
        try:
            for job_runs in runs.values():
                await job_runs.wait_for(3)
        finally:
            await asyncio.gather(*(s.stop() for s in schedulers))
            await storage.close()
        for name, job_runs in runs.items():
            once_per_period(job_runs.spans, PERIOD)
            assert runs_counted(name, "failed") == failed_before[name], name
        rows = {r.name: r for r in await schedulers[0].rows()}
        assert {rows[name].last_outcome for name in runs} == {"ok"}


class TestFailure:
    async def test_a_failed_run_is_recorded_and_tried_again_next_period(
        self, replicas: tuple[Database, Database]
    ) -> None:
        job = f"failing_{os.urandom(4).hex()}"
        runs = Runs()

        async def fail() -> None:
            raise RuntimeError("the PACS is down")

        s = scheduler(replicas[0], "replica0")
        s.add(job, PERIOD, runs.recording(s.owner, fail))
        await s.start()
        try:
            await runs.wait_for(2)
        finally:
            await s.stop()
        once_per_period(runs.spans, PERIOD)
        assert runs_counted(job, "failed") == len(runs.spans)
        assert runs_counted(job, "ok") == 0
        (row,) = [r for r in await s.rows() if r.name == job]
        assert row.last_outcome == "failed"

    async def test_a_job_registered_twice_is_refused(
        self, replicas: tuple[Database, Database]
    ) -> None:
        s = scheduler(replicas[0], "replica0")
        s.add("twice", PERIOD, lambda: asyncio.sleep(0))
        with pytest.raises(ValueError, match="twice"):
            s.add("twice", PERIOD, lambda: asyncio.sleep(0))


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from relaypacs.db import Database
    from relaypacs.scheduler import Scheduler

    async def main(url, job):
        db = Database.open(url)
        s = Scheduler(db.sessionmaker, owner="doomed", lease_seconds=1.5, poll_seconds=0.1)

        async def hang():
            print("running", flush=True)
            await asyncio.Event().wait()

        s.add(job, 0.5, hang)
        await s.start()
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


class TestKilledReplica:
    async def test_another_replica_takes_the_job_over_once_the_lease_runs_out(
        self, fresh_database_url: str, replicas: tuple[Database, Database]
    ) -> None:
        job = f"held_{os.urandom(4).hex()}"
        holder = subprocess.Popen(  # a replica of its own: a process, killed for real
            [sys.executable, "-c", HOLDER, fresh_database_url, job],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert holder.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 60)
            assert line.strip() == b"running"
            runs = Runs()
            survivor = scheduler(replicas[1], "survivor", lease_seconds=1.5)
            survivor.add(job, 0.5, runs.recording("survivor"))
            await survivor.start()
            try:
                # While the holder lives it renews its lease: the job is not run again, though
                # its period (0.5 s) passes many times over.
                await asyncio.sleep(2.5)
                assert runs.spans == []
                (held,) = [r for r in await survivor.rows() if r.name == job]
                assert held.lease_owner == "doomed"
                holder.send_signal(signal.SIGKILL)
                holder.wait()
                killed = utcnow()
                await runs.wait_for(1)
                # The run is over; its outcome is written just after (stopping now could
                # cancel that write).
                async with asyncio.timeout(30):
                    while not [
                        r for r in await survivor.rows() if r.name == job and r.last_outcome
                    ]:
                        await asyncio.sleep(0.05)
            finally:
                await survivor.stop()
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        taken_over = runs.spans[0][1]
        assert taken_over > killed
        (row,) = [r for r in await survivor.rows() if r.name == job]
        assert row.lease_owner == "survivor"
        assert row.last_outcome == "ok"
