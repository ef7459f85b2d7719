"""The forwarding worker: claims due jobs, sends their instances by STOW-RS, verifies by QIDO-RS.

Any number of workers (threads of one process, or replicas on one PostgreSQL) share the queue:
a job is claimed with `FOR UPDATE SKIP LOCKED` and a lease; while a worker holds the lease it
renews it, and every write it makes is fenced by the lease token, so a worker that froze or
died cannot spoil the work of the one that took over. A crash at any point loses nothing: a job
whose lease ran out is due again, and re-sending is safe because the PACS keeps one copy per
SOP Instance UID.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx
from sqlalchemy import Connection, Engine, Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relaypacs.audit.service import record_event
from relaypacs.config import PacsTarget, Settings
from relaypacs.db import sqlite_write_lock, utcnow
from relaypacs.forwarding.breaker import CircuitBreaker, retry_delay
from relaypacs.forwarding.models import ForwardJob, JobStatus
from relaypacs.notifications.models import Notification
from relaypacs.pacs.dicomweb import DicomWebClient, Disposition, InstancePart, InstanceResult
from relaypacs.reports.models import Report
from relaypacs.storage import ObjectStorage
from relaypacs.uploads.models import (
    ForwardStatus,
    Upload,
    UploadFile,
    UploadStatus,
)
from relaypacs.uploads.repository import recorded_chunk_keys

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker owns the job now: stop, write nothing more."""


@dataclass(frozen=True)
class Claim:
    job_id: uuid.UUID
    token: int
    upload_id: uuid.UUID
    target: str


def make_batches(
    parts: Sequence[InstancePart], max_instances: int, max_bytes: int
) -> list[list[InstancePart]]:
    """Consecutive batches of at most `max_instances` instances and `max_bytes` bytes (an
    instance larger than max_bytes goes alone)."""
    batches: list[list[InstancePart]] = []
    current: list[InstancePart] = []
    size = 0
    for part in parts:
        if current and (len(current) >= max_instances or size + part.size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(part)
        size += part.size
    if current:
        batches.append(current)
    return batches


_FILES = cast(Table, UploadFile.__table__)
_RECORD_FILE = (
    update(_FILES)
    .where(_FILES.c.upload_id == bindparam("b_upload"), _FILES.c.index == bindparam("b_index"))
    .values(forward_status=bindparam("b_status"), forward_error=bindparam("b_error"))
)


def _record_sync(
    connection: Connection, claim: Claim, lease: dt.timedelta, rows: list[dict[str, Any]]
) -> None:
    """One batch's answers, fenced by the lease token (see Forwarder._fence)."""
    now = utcnow()
    fenced = connection.execute(
        update(ForwardJob)
        .where(ForwardJob.id == claim.job_id, ForwardJob.lease_token == claim.token)
        .values(
            lease_until=now + lease,
            updated_at=now,
            stow_requests=ForwardJob.stow_requests + 1,
        )
    )
    if not fenced.rowcount:
        raise LeaseLost()
    connection.execute(_RECORD_FILE, [{"b_upload": claim.upload_id, **row} for row in rows])


class Forwarder:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: ObjectStorage,
        settings: Settings,
        jobs_at_once: int = 2,
        engine: AsyncEngine | None = None,
        sync_engine: Engine | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        # SQLite: each batch's record is one thread call on the synchronous engine (through
        # aiosqlite it was a dozen hops between threads, 30 times for a CT series).
        self._engine = engine
        self._sync_engine = sync_engine if engine is not None else None
        self._settings = settings
        self._targets: dict[str, PacsTarget] = {t.name: t for t in settings.pacs_targets}
        self._clients = {name: DicomWebClient(t, storage) for name, t in self._targets.items()}
        self._breakers = {
            name: CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds)
            for name in self._targets
        }
        self._in_flight = {
            name: asyncio.Semaphore(t.max_in_flight) for name, t in self._targets.items()
        }
        self._lease = dt.timedelta(seconds=settings.forward_lease_seconds)
        self._jobs_at_once = jobs_at_once
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def breaker(self, target: str) -> CircuitBreaker:
        return self._breakers[target]

    def wake(self) -> None:
        """A job became due now (a study was accepted): do not wait for the next poll."""
        self._wakeup.set()

    async def start(self) -> None:
        for name, client in self._clients.items():
            problem = await client.probe()
            if problem is None:
                logger.info("PACS target %r answers; forwarding to it", name)
            else:
                logger.warning(
                    "PACS target %r is not reachable (%s): accepted studies stay queued and "
                    "are sent when it answers",
                    name,
                    problem,
                )
        for _ in range(self._jobs_at_once):
            task = asyncio.create_task(self._loop())
            self._tasks.add(task)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for client in self._clients.values():
            await client.aclose()

    async def _loop(self) -> None:
        while not self._stopping:
            # Cleared before claiming, never after: a wake-up that comes while the claim runs
            # (a study committed just after the claim looked) must not be lost until the poll.
            self._wakeup.clear()
            try:
                claim = await self.claim()
            except Exception as exc:  # the database may be briefly unavailable
                logger.warning("claiming a forwarding job failed: %s", type(exc).__name__)
                claim = None
            if claim is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wakeup.wait(), timeout=self._settings.forward_poll_seconds
                    )
                continue
            try:
                await self.run_job(claim)
            except LeaseLost:
                logger.warning("lost the lease of forwarding job %s", claim.job_id)
            except Exception as exc:
                logger.error("forwarding job %s failed: %s", claim.job_id, type(exc).__name__)
                await self._release_after_error(claim, type(exc).__name__)

    # --- claiming ----------------------------------------------------------------------

    async def claim(self) -> Claim | None:
        """Take the lease of one due job whose target's breaker lets requests through."""
        targets = [name for name, b in self._breakers.items() if b.would_allow()]
        if not targets:
            return None
        now = utcnow()
        async with self._sessionmaker() as session, session.begin():
            job = await session.scalar(
                select(ForwardJob)
                .where(
                    ForwardJob.status == JobStatus.QUEUED,
                    ForwardJob.next_attempt_at <= now,
                    (ForwardJob.lease_until.is_(None)) | (ForwardJob.lease_until < now),
                    ForwardJob.target.in_(targets),
                )
                .order_by(ForwardJob.next_attempt_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            job.lease_owner = self.worker_id
            job.lease_until = now + self._lease
            job.lease_token += 1
            await session.flush()
            return Claim(job.id, job.lease_token, job.upload_id, job.target)

    async def _fence(self, session: AsyncSession, claim: Claim, **values: Any) -> None:
        """Extend the lease (and set `values` on the job); raise LeaseLost if the job is no
        longer ours. Fences the writes of the transaction it runs in (on PostgreSQL it also
        locks the job's row)."""
        result = await session.execute(
            update(ForwardJob)
            .where(ForwardJob.id == claim.job_id, ForwardJob.lease_token == claim.token)
            .values(lease_until=utcnow() + self._lease, updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise LeaseLost()

    async def _renew(self, session: AsyncSession, claim: Claim) -> ForwardJob:
        """:meth:`_fence`, then the job's row."""
        await self._fence(session, claim)
        job = await session.get(ForwardJob, claim.job_id, populate_existing=True)
        assert job is not None
        return job

    async def _heartbeat(self, claim: Claim, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                async with self._sessionmaker() as session, session.begin():
                    await self._fence(session, claim)
            except LeaseLost:
                lost.set()
                return
            except Exception as exc:
                logger.warning("renewing a lease failed: %s", type(exc).__name__)

    # --- one job -----------------------------------------------------------------------

    async def run_job(self, claim: Claim) -> None:
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(claim, lost))
        work = asyncio.create_task(self._work(claim))
        lease_lost = asyncio.create_task(lost.wait())
        try:
            done, _ = await asyncio.wait({work, lease_lost}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                    await work
                raise LeaseLost()
            work.result()
        finally:
            for task in (heartbeat, lease_lost):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _work(self, claim: Claim) -> None:
        target = self._targets[claim.target]
        client = self._clients[claim.target]
        breaker = self._breakers[claim.target]
        async with self._sessionmaker() as session, session.begin():
            job = await self._renew(session, claim)
            upload = await session.get(Upload, claim.upload_id)
            assert upload is not None
            if upload.status == UploadStatus.CANCELLED:
                job.status = JobStatus.CANCELLED
                job.finished_at = utcnow()
                return
            if upload.status == UploadStatus.QUEUED:
                upload.status = UploadStatus.FORWARDING
            study_uid = upload.study_instance_uid
            # Columns, not ORM objects: a study has thousands of files, and this is the fixed
            # cost before the first request goes out.
            files = (
                await session.execute(
                    select(
                        UploadFile.index,
                        UploadFile.sop_instance_uid,
                        UploadFile.size,
                        UploadFile.preamble,
                        UploadFile.forward_status,
                    )
                    .where(
                        UploadFile.upload_id == claim.upload_id,
                        UploadFile.forward_status.is_not(None),
                    )
                    .order_by(UploadFile.index)
                )
            ).all()
            keys = await recorded_chunk_keys(session, claim.upload_id)
        to_send = [
            InstancePart(
                file_index=index,
                sop_instance_uid=sop or "",
                size=size,
                keys=tuple(keys[index].values()),
                zero_preamble=preamble == "nonzero",
            )
            for index, sop, size, preamble, status in files
            if status == ForwardStatus.PENDING
        ]
        sop_of = {index: sop for index, sop, *_ in files}

        retry_reasons: list[str] = []
        if to_send:
            batches = make_batches(to_send, target.batch_instances, target.batch_bytes)
            retry_reasons = await self._send_all(claim, client, breaker, study_uid, batches)
        if retry_reasons:
            await self._schedule_retry(claim, retry_reasons[0])
            return
        # Everything was answered: verify with QIDO-RS before anything counts as delivered.
        try:
            listed = await client.instance_uids(study_uid, expected=len(files))
        except httpx.HTTPError as exc:
            self._target_failed(claim.target, type(exc).__name__)
            await self._schedule_retry(claim, f"verification: {type(exc).__name__}")
            return
        breaker.record_success()
        await self._settle(claim, sop_of, listed)

    async def _send_all(
        self,
        claim: Claim,
        client: DicomWebClient,
        breaker: CircuitBreaker,
        study_uid: str,
        batches: list[list[InstancePart]],
    ) -> list[str]:
        """Send the batches (at most max_in_flight at once for the target); record each
        batch's answer as it comes. Returns the reasons of transient failures, if any."""
        semaphore = self._in_flight[claim.target]
        retry_reasons: list[str] = []

        async def send(batch: list[InstancePart]) -> None:
            results = await request(batch)
            if results:  # recorded outside the in-flight slot: the next request goes meanwhile
                await self._record(claim, results)
                retry_reasons.extend(
                    r.reason or "retry" for r in results if r.disposition == Disposition.RETRY
                )

        async def request(batch: list[InstancePart]) -> list[InstanceResult]:
            async with semaphore:
                if not breaker.allow():
                    retry_reasons.append("circuit_open")
                    return []
                outcome = await client.store(study_uid, batch)
                if outcome.target_error is not None:
                    self._target_failed(claim.target, outcome.target_error)
                elif outcome.http_status is not None:
                    breaker.record_success()
                results = outcome.results
                unexplained = {
                    r.file_index
                    for r in results
                    if r.disposition == Disposition.FAILED and (r.reason or "").startswith("http_")
                }
                if unexplained and len(batch) > 1:
                    # The request was refused without a reason per instance: send those alone
                    # to find out which of them the PACS refuses.
                    results = [r for r in results if r.file_index not in unexplained]
                    for part in batch:
                        if part.file_index in unexplained:
                            single = await client.store(study_uid, [part])
                            results.extend(single.results)
                return results

        await asyncio.gather(*(send(batch) for batch in batches))
        return retry_reasons

    def _target_failed(self, target: str, error: str) -> None:
        breaker = self._breakers[target]
        was_open = breaker.state == "open"
        breaker.record_failure()
        if breaker.state == "open" and not was_open:
            logger.warning(
                "PACS target %r: circuit breaker open for %.0f s after %d consecutive failures "
                "(last: %s); its studies stay queued",
                target,
                breaker.reset_seconds,
                breaker.consecutive,
                error,
            )

    async def _record(self, claim: Claim, results: list[InstanceResult]) -> None:
        status_of = {
            Disposition.STORED: ForwardStatus.SENT,
            Disposition.FAILED: ForwardStatus.FAILED,
            Disposition.RETRY: ForwardStatus.PENDING,
        }
        if self._sync_engine is not None and self._engine is not None:
            sync_engine = self._sync_engine
            rows = [
                {
                    "b_index": r.file_index,
                    "b_status": status_of[r.disposition],
                    "b_error": r.reason if r.disposition != Disposition.STORED else None,
                }
                for r in results
            ]

            def in_thread() -> None:
                with sync_engine.begin() as connection:
                    _record_sync(connection, claim, self._lease, rows)

            async with sqlite_write_lock(self._engine):
                await asyncio.to_thread(in_thread)
            return
        async with self._sessionmaker() as session, session.begin():
            await self._fence(session, claim, stow_requests=ForwardJob.stow_requests + 1)
            await session.execute(
                update(UploadFile),
                [
                    {
                        "upload_id": claim.upload_id,
                        "index": r.file_index,
                        "forward_status": status_of[r.disposition],
                        "forward_error": r.reason if r.disposition != Disposition.STORED else None,
                    }
                    for r in results
                ],
            )

    async def _schedule_retry(self, claim: Claim, reason: str) -> None:
        async with self._sessionmaker() as session, session.begin():
            job = await self._renew(session, claim)
            job.attempts += 1
            delay = retry_delay(
                job.attempts,
                self._settings.forward_retry_delays,
                self._settings.forward_retry_interval,
            )
            breaker = self._breakers[claim.target]
            delay = max(delay, breaker.seconds_until_retry())
            job.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
            job.last_error = reason[:500]
            job.lease_owner = None
            job.lease_until = None
            await self._refresh_counts(session, job)
        logger.info(
            "forwarding job %s: retry %d in %.1f s (%s)", claim.job_id, job.attempts, delay, reason
        )

    async def _release_after_error(self, claim: Claim, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._schedule_retry(claim, f"internal: {reason}")

    async def _refresh_counts(self, session: AsyncSession, job: ForwardJob) -> int:
        """Update the job's counters from its files; returns the number of instances."""
        rows = await session.execute(
            select(UploadFile.forward_status, func.count())
            .where(UploadFile.upload_id == job.upload_id, UploadFile.forward_status.is_not(None))
            .group_by(UploadFile.forward_status)
        )
        counts: dict[ForwardStatus | None, int] = {}
        for status, n in rows:
            counts[status] = n
        job.confirmed_count = counts.get(ForwardStatus.CONFIRMED, 0)
        job.failed_count = counts.get(ForwardStatus.FAILED, 0)
        job.sent_count = job.confirmed_count + counts.get(ForwardStatus.SENT, 0)
        return sum(counts.values())

    async def _settle(self, claim: Claim, sop_of: dict[int, str | None], listed: set[str]) -> None:
        """Mark what QIDO-RS lists as confirmed; deliver, fail, or retry the rest."""
        async with self._sessionmaker() as session, session.begin():
            job = await self._renew(session, claim)
            answered = (
                await session.execute(
                    select(UploadFile.index).where(
                        UploadFile.upload_id == claim.upload_id,
                        UploadFile.forward_status.in_(
                            (ForwardStatus.SENT, ForwardStatus.CONFIRMED)
                        ),
                    )
                )
            ).scalars()
            # The PACS said stored but does not list it: send it again.
            unlisted = [index for index in answered if sop_of.get(index) not in listed]
            unconfirmed = len(unlisted)
            if unlisted:
                await session.execute(
                    update(UploadFile),
                    [
                        {
                            "upload_id": claim.upload_id,
                            "index": index,
                            "forward_status": ForwardStatus.PENDING,
                            "forward_error": "not_listed_by_qido",
                        }
                        for index in unlisted
                    ],
                )
            await session.execute(
                update(UploadFile)
                .where(
                    UploadFile.upload_id == claim.upload_id,
                    UploadFile.forward_status == ForwardStatus.SENT,
                )
                .values(forward_status=ForwardStatus.CONFIRMED, forward_error=None)
                .execution_options(synchronize_session=False)
            )
            instances = await self._refresh_counts(session, job)
            if not unconfirmed:
                upload = await session.get(Upload, claim.upload_id)
                assert upload is not None
                if upload.status == UploadStatus.CANCELLED:
                    return  # cancelled meanwhile (the cancel also took the job from us)
                now = utcnow()
                job.status = JobStatus.DONE
                job.finished_at = now
                job.lease_owner = None
                job.lease_until = None
                job.last_error = None
                delivered = job.failed_count == 0
                upload.status = UploadStatus.DELIVERED if delivered else UploadStatus.FAILED
                if delivered:
                    upload.delivered_at = now
                    session.add(Report(upload_id=upload.id))
                session.add(
                    Notification(
                        user_id=upload.user_id,
                        type="upload_delivered" if delivered else "upload_failed",
                        related_id=upload.id,
                        payload={
                            "target": claim.target,
                            "confirmed": job.confirmed_count,
                            "failed": job.failed_count,
                            "instances": instances,
                        },
                    )
                )
                await record_event(
                    session,
                    action="forward.delivered" if delivered else "forward.failed",
                    outcome="success" if delivered else "failure",
                    object_type="upload",
                    object_id=upload.id,
                    study_instance_uid=upload.study_instance_uid,
                    details={
                        "target": claim.target,
                        "confirmed": job.confirmed_count,
                        "failed": job.failed_count,
                        "stow_requests": job.stow_requests,
                    },
                )
                logger.info(
                    "upload %s %s: %s confirmed %d/%d",
                    upload.id,
                    upload.status.value,
                    claim.target,
                    job.confirmed_count,
                    instances,
                )
                return
        await self._schedule_retry(claim, f"{unconfirmed} instances not listed by QIDO-RS")
