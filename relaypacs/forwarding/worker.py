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
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

import httpx
from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.config import PacsTarget, Settings
from relaypacs.db import utcnow
from relaypacs.forwarding import repository
from relaypacs.forwarding.breaker import CircuitBreaker, retry_delay
from relaypacs.forwarding.errors import LeaseLost
from relaypacs.forwarding.models import JobKind
from relaypacs.forwarding.repository import Claim, Delivered
from relaypacs.forwarding.service import TARGET_REMOVED
from relaypacs.forwarding.source import (
    ForwardCounts,
    InstanceSource,
    SentInstance,
    SettledUpload,
    SettleHook,
    Settlement,
)
from relaypacs.forwarding.verification import (
    ContentCheck,
    ContentUnverifiable,
    check_content,
    check_early,
    checks_early,
)
from relaypacs.pacs.dicomweb import DicomWebClient, Disposition, InstancePart, InstanceResult
from relaypacs.storage import ObjectStorage, StorageError
from relaypacs.telemetry import REQUEST_ID
from relaypacs.telemetry.metrics import FORWARD_ATTEMPTS, FORWARD_DELIVERY, FORWARD_INSTANCES

logger = logging.getLogger(__name__)

EARLY_CHECKED = 64  # jobs whose early content checks are remembered (Forwarder._checked)
SOP_INSTANCE_CONFLICT = (
    "sop_instance_conflict: the gateway delivered other bytes under this SOP Instance UID to "
    "this PACS before (a PACS keeps the first copy of an instance)"
)


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


def _full_batches(
    batches: list[list[InstancePart]], max_instances: int, max_bytes: int
) -> list[list[InstancePart]]:
    """While a study is still uploading, its last batch waits for more instances unless it is
    full (by count, or by half its bytes): no request of two instances where ten would go."""
    if batches:
        last = batches[-1]
        if len(last) < max_instances and sum(p.size for p in last) < max_bytes // 2:
            return batches[:-1]
    return batches


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
        self._removed_checked = -float("inf")  # when jobs of removed targets were last looked for
        self._tasks: set[asyncio.Task[None]] = set()
        # Content found at the PACS as sent while a study was still uploading (pipelined relay,
        # `content` verification): (upload, target) -> file index -> MD5 sent. Only the
        # instances not in it are checked at the end. In memory: a job that another process
        # finishes checks everything, as before. At most EARLY_CHECKED jobs are remembered.
        self._checked: OrderedDict[tuple[uuid.UUID, str], dict[int, str]] = OrderedDict()
        # The check of each job's last pass, running beside its next pass (one at a time).
        self._early: dict[tuple[uuid.UUID, str], asyncio.Task[None]] = {}
        self._stopping = False
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

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
        source = self._sources.get(claim.kind)
        if source is None:
            raise RuntimeError(f"this Forwarder has no instance source for {claim.kind} jobs")
        return source

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
        early = list(self._early.values())
        self._early.clear()
        for task in [*self._tasks, *early]:
            task.cancel()
        for task in [*self._tasks, *early]:
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
                await self._fail_removed_targets()
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

    async def _fail_removed_targets(self) -> None:
        """While idle, at most every few polls: fail the jobs whose PACS target was removed
        from the settings (no worker would ever claim them: they would wait forever)."""
        now = asyncio.get_running_loop().time()
        if now - self._removed_checked < max(10 * self._settings.forward_poll_seconds, 10.0):
            return
        self._removed_checked = now
        try:
            while not self._stopping and await self.fail_one_removed_target():
                pass
        except LeaseLost:
            pass
        except Exception as exc:
            logger.warning("failing the jobs of removed targets: %s", type(exc).__name__)

    async def fail_one_removed_target(self) -> bool:
        """Fail one due job whose target is not configured here and that no worker touched for
        RELAYPACS_FORWARD_REMOVED_TARGET_GRACE_SECONDS (False: none). A study job fails its
        upload (the uploader is told, as for a PACS's refusal); a report job leaves the report
        signed, unwritten. Both are audited `forward.failed` with the reason `target_removed`."""
        grace = dt.timedelta(seconds=self._settings.forward_removed_target_grace_seconds)
        async with self._sessionmaker() as session, session.begin():
            claim = await repository.claim_removed_target(
                session,
                targets=list(self._targets),
                owner=self.worker_id,
                lease=self._lease,
                quiet_for=grace,
            )
            if claim is None:
                return False
            job = await repository.renew(session, claim, self._lease)
            now = utcnow()
            reason = f"{TARGET_REMOVED}: the PACS target {claim.target!r} is no longer configured"
            upload = None
            counts = None
            if claim.kind == JobKind.STUDY:
                source = self._source_of(claim)
                counts = await source.counts(session, claim.upload_id)
                repository.set_counts(job, counts)
                upload = await source.finish(session, claim.upload_id, delivered=False, at=now)
                if upload is None:  # cancelled meanwhile
                    repository.mark_cancelled(job)
                    return True
            repository.mark_abandoned(job, at=now, reason=reason)
            if upload is not None and counts is not None:
                await self._run_settle_hooks(
                    session, claim, upload, counts, job.stow_requests, delivered=False
                )
            await record_event(
                session,
                actor=SYSTEM,
                action="forward.failed",
                outcome="failure",
                object_type="upload",
                object_id=claim.upload_id,
                study_instance_uid=upload.study_instance_uid if upload else None,
                details={
                    "target": claim.target,
                    "kind": claim.kind.value,
                    "reason": TARGET_REMOVED,
                },
            )
        logger.warning(
            "upload %s: %s job %s failed: its PACS target %r is no longer configured",
            claim.upload_id,
            claim.kind,
            claim.job_id,
            claim.target,
        )
        return True

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
                    self._checked.pop((claim.upload_id, claim.target), None)
                    return
                batches = make_batches(study.to_send, target.batch_instances, target.batch_bytes)
                if not study.settle:
                    batches = _full_batches(batches, target.batch_instances, target.batch_bytes)
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
            self._check_early_beside(claim, client, study.study_instance_uid, stored)
        # Everything was answered: verify with QIDO-RS (and the content, as the target asks)
        # before anything counts as delivered.
        try:
            listed = await client.instance_uids(study.study_instance_uid, expected=study.instances)
            async with self._sessionmaker() as session:
                sent = await self._source_of(claim).sent_instances(session, claim.upload_id)
            early = self._early.get((claim.upload_id, claim.target))
            if early is not None:  # the last pass's check, still running: its answers count
                with contextlib.suppress(Exception):
                    await asyncio.shield(early)
            known = self._checked.get((claim.upload_id, claim.target))
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

    def _check_early_beside(
        self,
        claim: Claim,
        client: DicomWebClient,
        study_uid: str,
        stored: dict[int, tuple[str, str]],
    ) -> None:
        """While the study uploads: check the content of what this pass stored (as the end
        would), beside the next pass, so that the end checks only the rest. After the previous
        pass's check: one at a time per job. An optimisation: what it does not find, the end
        checks."""
        if not stored or not checks_early(client):
            return
        key = (claim.upload_id, claim.target)
        previous = self._early.get(key)
        task = asyncio.create_task(self._check_early(key, client, study_uid, stored, previous))
        self._early[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._early.get(key) is done:
                del self._early[key]

        task.add_done_callback(forget)

    async def _check_early(
        self,
        key: tuple[uuid.UUID, str],
        client: DicomWebClient,
        study_uid: str,
        stored: dict[int, tuple[str, str]],
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        held: dict[int, str] = {}
        for attempt in range(2):  # once more on a connection the PACS had closed meanwhile
            try:
                held = await check_early(client, study_uid, stored)
                break
            except httpx.TransportError as exc:
                if attempt:
                    logger.info(
                        "early content check failed (left to the end): %s", type(exc).__name__
                    )
                    return
            except httpx.HTTPError as exc:
                logger.info("early content check failed (left to the end): %s", type(exc).__name__)
                return
        self._checked.setdefault(key, {}).update(held)
        self._checked.move_to_end(key)
        while len(self._checked) > EARLY_CHECKED:
            self._checked.popitem(last=False)

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
        """Mark what QIDO-RS lists as confirmed; deliver, fail, or retry the rest. Instances
        whose content is not what was sent, or whose UID the target holds with other bytes as
        delivered earlier, fail for good."""
        source = self._source_of(claim)
        async with self._sessionmaker() as session, session.begin():
            job = await repository.renew(session, claim, self._lease)
            # The PACS said stored but does not list it: sent again (by the retry below).
            unconfirmed = await source.confirm_listed(
                session, claim.upload_id, sop_uids=sop_uids, listed=listed
            )
            if not unconfirmed:
                await self._register(session, claim, sent, listed, content)
            counts = await source.counts(session, claim.upload_id)
            repository.set_counts(job, counts)
            if not unconfirmed:
                now = utcnow()
                delivered = counts.failed == 0
                upload = await source.finish(session, claim.upload_id, delivered=delivered, at=now)
                if upload is None:
                    return  # cancelled meanwhile (the cancel also took the job from us)
                repository.mark_done(job, at=now)
                self._checked.pop((claim.upload_id, claim.target), None)
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
                if delivered:
                    self._delivery[claim.target].observe((now - job.created_at).total_seconds())
                await self._run_settle_hooks(
                    session, claim, upload, counts, job.stow_requests, delivered=delivered
                )
                await record_event(
                    session,
                    actor=SYSTEM,
                    action="forward.delivered" if delivered else "forward.failed",
                    outcome="success" if delivered else "failure",
                    object_type="upload",
                    object_id=claim.upload_id,
                    study_instance_uid=upload.study_instance_uid,
                    details={
                        "target": claim.target,
                        "confirmed": counts.confirmed,
                        "failed": counts.failed,
                        "content_mismatches": len(content.mismatched),
                        "content_verified": len(content.verified),
                        "stow_requests": job.stow_requests,
                    },
                )
                logger.info(
                    "upload %s %s: %s confirmed %d/%d",
                    claim.upload_id,
                    "delivered" if delivered else "failed",
                    claim.target,
                    counts.confirmed,
                    counts.instances,
                )
                return
        await self._schedule_retry(claim, f"{unconfirmed} instances not listed by QIDO-RS")

    async def _run_settle_hooks(
        self,
        session: AsyncSession,
        claim: Claim,
        upload: SettledUpload,
        counts: ForwardCounts,
        stow_requests: int,
        *,
        delivered: bool,
    ) -> None:
        """The settle hooks (notifications, reports...) run in the settling transaction."""
        settlement = Settlement(
            upload_id=claim.upload_id,
            user_id=upload.user_id,
            study_instance_uid=upload.study_instance_uid,
            target=claim.target,
            delivered=delivered,
            confirmed=counts.confirmed,
            failed=counts.failed,
            instances=counts.instances,
            stow_requests=stow_requests,
        )
        for hook in self._settle_hooks:
            await hook(session, settlement)

    async def _register(
        self,
        session: AsyncSession,
        claim: Claim,
        sent: Sequence[SentInstance],
        listed: set[str],
        content: ContentCheck,
    ) -> None:
        """Refuse the instances whose content the PACS holds otherwise, and record the rest in
        the registry of what the target holds; refuse those it records with other bytes."""
        source = self._source_of(claim)
        if content.mismatched:
            await source.refuse(session, claim.upload_id, content.mismatched)
        held = {
            i.part.sop_instance_uid: i
            for i in sent
            if i.part.file_index not in content.mismatched and i.part.sop_instance_uid in listed
        }
        conflicts = await repository.register_delivered(
            session,
            target=claim.target,
            upload_id=claim.upload_id,
            instances=[
                Delivered(
                    sop_instance_uid=uid,
                    sha256=i.sha256,
                    md5=content.md5s.get(i.part.file_index) or i.md5,
                    content_verified=i.part.file_index in content.verified,
                )
                for uid, i in held.items()
            ],
        )
        if conflicts:
            await source.refuse(
                session,
                claim.upload_id,
                {held[uid].part.file_index: SOP_INSTANCE_CONFLICT for uid in conflicts},
            )
