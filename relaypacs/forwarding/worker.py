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
from collections.abc import AsyncIterator, Sequence

import httpx
from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relaypacs.config import PacsTarget, Settings
from relaypacs.db import utcnow
from relaypacs.forwarding import repository, settling
from relaypacs.forwarding.batches import full_batches, make_batches
from relaypacs.forwarding.breaker import CircuitBreaker, retry_delay
from relaypacs.forwarding.early_checks import EarlyChecks
from relaypacs.forwarding.errors import LeaseLost
from relaypacs.forwarding.models import JobKind
from relaypacs.forwarding.removed_targets import RemovedTargets
from relaypacs.forwarding.repository import Claim
from relaypacs.forwarding.source import InstanceSource, SentInstance, SettleHook
from relaypacs.forwarding.verification import ContentCheck, ContentUnverifiable, check_content
from relaypacs.pacs.dicomweb import DicomWebClient, Disposition, InstancePart, InstanceResult
from relaypacs.storage import ObjectStorage, StorageError
from relaypacs.telemetry import REQUEST_ID
from relaypacs.telemetry.metrics import FORWARD_ATTEMPTS, FORWARD_DELIVERY, FORWARD_INSTANCES

# make_batches: where the tests have always found it.
__all__ = ["Forwarder", "make_batches"]

logger = logging.getLogger(__name__)


class Forwarder:
    """The forwarding workers of this process (`jobs_at_once` jobs at a time), their PACS
    clients and circuit breakers.

    `source` owns the instances (relaypacs/uploads/relay.py; a Forwarder built without one can
    be woken and polled, not run a job); `settle_hooks` run in the transaction that settles a
    study (delivered or failed for good). `report_source` owns the instances of `report` jobs
    (relaypacs/reports/writeback.py: signed reports as Encapsulated PDF instances of their
    study): sent, verified and retried like a study's; its `finish` records what settling them
    means (no settle hook runs for them). On SQLite, give `engine` and `sync_engine`: each
    batch's answers are then recorded in one thread call (see repository.batch_recorder).
    """

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: ObjectStorage,
        settings: Settings,
        jobs_at_once: int = 2,
        engine: AsyncEngine | None = None,
        sync_engine: Engine | None = None,
        source: InstanceSource | None = None,
        settle_hooks: Sequence[SettleHook] = (),
        report_source: InstanceSource | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._batches = repository.batch_recorder(
            sessionmaker, engine=engine, sync_engine=sync_engine
        )
        self._sources: dict[JobKind, InstanceSource] = {}
        if source is not None:
            self._sources[JobKind.STUDY] = source
        if report_source is not None:
            self._sources[JobKind.REPORT] = report_source
        self._settle_hooks = tuple(settle_hooks)
        self._settings = settings
        self._targets: dict[str, PacsTarget] = {t.name: t for t in settings.pacs_targets}
        self._clients = {name: DicomWebClient(t, storage) for name, t in self._targets.items()}
        self._breakers = {
            name: CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds)
            for name in self._targets
        }
        self._attempts = {
            (name, outcome): FORWARD_ATTEMPTS.labels(name, outcome)
            for name in self._targets
            for outcome in ("delivered", "failed", "retry")
        }
        self._instance_counts = {
            (name, disposition): FORWARD_INSTANCES.labels(name, disposition.value)
            for name in self._targets
            for disposition in Disposition
        }
        self._delivery = {name: FORWARD_DELIVERY.labels(name) for name in self._targets}
        self._in_flight = {
            name: asyncio.Semaphore(t.max_in_flight) for name, t in self._targets.items()
        }
        self._lease = dt.timedelta(seconds=settings.forward_lease_seconds)
        self._jobs_at_once = jobs_at_once
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Content found at the PACS as sent while a study was still uploading (pipelined relay,
        # `content` verification): only the instances not found are checked at the end.
        self._early = EarlyChecks()
        self._stopping = False
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._removed = RemovedTargets(
            sessionmaker=sessionmaker,
            settings=settings,
            targets=list(self._targets),
            owner=self.worker_id,
            sources=self._sources,
            settle_hooks=self._settle_hooks,
        )

    def breaker(self, target: str) -> CircuitBreaker:
        return self._breakers[target]

    def breaker_states(self) -> dict[str, str]:
        """Each target's breaker: closed, open or half_open (the operators' gauge)."""
        return {name: breaker.state for name, breaker in self._breakers.items()}

    def wake(self) -> None:
        """A job became due now (a study was accepted): do not wait for the next poll."""
        self._wakeup.set()

    def _source_of(self, claim: Claim) -> InstanceSource:
        """Who owns the instances of the claimed job's kind."""
        return settling.source_of(self._sources, claim)

    async def start(self) -> None:
        if JobKind.STUDY not in self._sources:  # at start, not at the first job
            raise RuntimeError("a Forwarder needs an instance source to run jobs")
        for _ in range(self._jobs_at_once):
            task = asyncio.create_task(self._loop())
            self._tasks.add(task)
        # Beside the start, not before it: a PACS that hangs must not keep the gateway from
        # serving (uploads do not need the PACS; they wait in the queue).
        for name, client in self._clients.items():
            self._tasks.add(asyncio.create_task(self._announce(name, client)))

    async def _announce(self, name: str, client: DicomWebClient) -> None:
        """Say at start whether the target answers (the operator's first clue)."""
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

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await self._early.stop()
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
                await self._removed.sweep(lambda: self._stopping)
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
        async with self._sessionmaker() as session, session.begin():
            return await repository.claim_due(
                session, targets=targets, owner=self.worker_id, lease=self._lease
            )

    # --- jobs of a target no longer configured ---------------------------------------------

    async def fail_one_removed_target(self) -> bool:
        """Fail one due job whose target is not configured here (see
        removed_targets.RemovedTargets.fail_one); False: none."""
        return await self._removed.fail_one()

    async def _heartbeat(self, claim: Claim, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                async with self._sessionmaker() as session, session.begin():
                    await repository.fence(session, claim, self._lease)
            except LeaseLost:
                lost.set()
                return
            except Exception as exc:
                logger.warning("renewing a lease failed: %s", type(exc).__name__)

    # --- one job -----------------------------------------------------------------------

    async def run_job(self, claim: Claim) -> None:
        # The id of the request that queued the job (the upload's `complete`) on its log lines
        # and on its requests to the PACS (X-Request-ID): the study followed from the client's
        # request across the gateway's and the PACS's logs. A job queued without one (before
        # the request id was kept) goes by its own id and attempt.
        request_id = claim.request_id or f"fwd-{claim.job_id.hex[:12]}-{claim.token}"
        reset = REQUEST_ID.set(request_id)
        try:
            logger.info(
                "forwarding job %s to %s, attempt with lease %d",
                claim.job_id,
                claim.target,
                claim.token,
            )
            await self._run_job(claim)
        finally:
            REQUEST_ID.reset(reset)

    async def _run_job(self, claim: Claim) -> None:
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
        sent_before: set[int] = set()
        source = self._source_of(claim)

        @contextlib.asynccontextmanager
        async def fenced() -> AsyncIterator[AsyncSession]:
            async with self._sessionmaker() as session, session.begin():
                await repository.fence(session, claim, self._lease)
                yield session

        while True:
            # What the pass needs from the network (the report write-back asks the PACS for
            # its study), fetched with no transaction open: see source.InstanceSource.
            await source.prepare(claim.upload_id, fenced)
            # A pass: what is to send now. While the upload is still uploading (pipelined
            # relay), passes go on as long as instances arrive; then the job is parked in the
            # very transaction that found nothing to send (fenced first, which on PostgreSQL
            # locks the job's row: an instance recorded meanwhile wakes it, see
            # repository.wake_job).
            async with self._sessionmaker() as session, session.begin():
                job = await repository.renew(session, claim, self._lease)
                study = await source.start(session, claim.upload_id)
                if study is None:  # the upload was cancelled (or rejected)
                    repository.mark_cancelled(job)
                    self._early.forget((claim.upload_id, claim.target))
                    return
                batches = make_batches(study.to_send, target.batch_instances, target.batch_bytes)
                if not study.settle and not study.whole:  # the last batch may wait for more
                    batches = full_batches(batches, target.batch_instances, target.batch_bytes)
                    if not batches:
                        repository.park(job)
                        return
            indexes = {part.file_index for batch in batches for part in batch}
            if indexes and indexes <= sent_before:  # sent and still unanswered: not again now
                await self._schedule_retry(claim, "instances left unanswered")
                return
            sent_before |= indexes
            retry_reasons: list[str] = []
            stored: dict[int, tuple[str, str]] = {}
            if batches:
                retry_reasons = await self._send_all(
                    claim, client, breaker, study.study_instance_uid, batches, stored
                )
            if retry_reasons:
                await self._schedule_retry(claim, retry_reasons[0])
                return
            if study.settle:
                break
            self._early.start(
                (claim.upload_id, claim.target), client, study.study_instance_uid, stored
            )
        # Everything was answered: verify with QIDO-RS (and the content, as the target asks)
        # before anything counts as delivered.
        try:
            listed = await client.instance_uids(study.study_instance_uid, expected=study.instances)
            async with self._sessionmaker() as session:
                sent = await self._source_of(claim).sent_instances(session, claim.upload_id)
            known = await self._early.known((claim.upload_id, claim.target))
            content = await check_content(
                client, study.study_instance_uid, sent, listed, known=known
            )
        except httpx.HTTPError as exc:
            self._target_failed(claim.target, type(exc).__name__)
            await self._schedule_retry(claim, f"verification: {type(exc).__name__}")
            return
        except (StorageError, ContentUnverifiable) as exc:
            await self._schedule_retry(claim, f"verification: {exc}")
            return
        breaker.record_success()
        await self._settle(claim, study.sop_uids, listed, sent, content)

    async def _send_all(
        self,
        claim: Claim,
        client: DicomWebClient,
        breaker: CircuitBreaker,
        study_uid: str,
        batches: list[list[InstancePart]],
        stored: dict[int, tuple[str, str]] | None = None,
    ) -> list[str]:
        """Send the batches (at most max_in_flight at once for the target); record each
        batch's answer as it comes. Returns the reasons of transient failures, if any.
        `stored`: filled with file index -> (SOP Instance UID, MD5 sent) of the instances
        answered stored with the MD5 of their bytes."""
        uid_of = {part.file_index: part.sop_instance_uid for batch in batches for part in batch}
        semaphore = self._in_flight[claim.target]
        retry_reasons: list[str] = []

        async def send(batch: list[InstancePart]) -> None:
            results = await request(batch)
            for result in results:
                self._instance_counts[claim.target, result.disposition].inc()
                if stored is not None and result.disposition == Disposition.STORED and result.md5:
                    stored[result.file_index] = (uid_of[result.file_index], result.md5)
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
        """One batch's answers, in one transaction fenced by the lease token."""
        source = self._source_of(claim)

        def answers(connection: Connection) -> None:
            source.record_answers(connection, claim.upload_id, results)

        await self._batches.record(claim, self._lease, answers)

    async def _schedule_retry(self, claim: Claim, reason: str) -> None:
        async with self._sessionmaker() as session, session.begin():
            job = await repository.renew(session, claim, self._lease)
            attempts = job.attempts + 1
            delay = retry_delay(
                attempts,
                self._settings.forward_retry_delays,
                self._settings.forward_retry_interval,
            )
            breaker = self._breakers[claim.target]
            delay = max(delay, breaker.seconds_until_retry())
            repository.schedule_retry(
                job,
                attempts=attempts,
                next_attempt_at=utcnow() + dt.timedelta(seconds=delay),
                reason=reason,
            )
            repository.set_counts(
                job, await self._source_of(claim).counts(session, claim.upload_id)
            )
        self._attempts[claim.target, "retry"].inc()
        logger.info(
            "forwarding job %s: retry %d in %.1f s (%s)", claim.job_id, attempts, delay, reason
        )

    async def _release_after_error(self, claim: Claim, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._schedule_retry(claim, f"internal: {reason}")

    async def _settle(
        self,
        claim: Claim,
        sop_uids: dict[int, str | None],
        listed: set[str],
        sent: Sequence[SentInstance],
        content: ContentCheck,
    ) -> None:
        """Settle the job (see settling.settle), or retry it if the PACS does not list some
        instance it answered stored."""
        async with self._sessionmaker() as session, session.begin():
            job = await repository.renew(session, claim, self._lease)
            settled = await settling.settle(
                session,
                job,
                claim,
                self._source_of(claim),
                self._settle_hooks,
                sop_uids=sop_uids,
                listed=listed,
                sent=sent,
                content=content,
            )
            if settled.upload is not None:  # else: to retry (below), or cancelled meanwhile
                self._settled(claim, job.created_at, settled)
        if settled.unconfirmed:
            await self._schedule_retry(
                claim, f"{settled.unconfirmed} instances not listed by QIDO-RS"
            )

    def _settled(self, claim: Claim, created_at: dt.datetime, settled: settling.Settled) -> None:
        """The metrics and the log line of a job just settled."""
        counts, delivered = settled.counts, settled.delivered
        self._early.forget((claim.upload_id, claim.target))
        self._attempts[claim.target, "delivered" if delivered else "failed"].inc()
        if claim.kind != JobKind.STUDY:
            logger.info(
                "upload %s: %s job %s: %s confirmed %d/%d",
                claim.upload_id,
                claim.kind,
                "delivered" if delivered else "failed",
                claim.target,
                counts.confirmed,
                counts.instances,
            )
            return
        if delivered and settled.at is not None:
            self._delivery[claim.target].observe((settled.at - created_at).total_seconds())
        logger.info(
            "upload %s %s: %s confirmed %d/%d",
            claim.upload_id,
            "delivered" if delivered else "failed",
            claim.target,
            counts.confirmed,
            counts.instances,
        )
