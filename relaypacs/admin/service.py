"""The administration console's use cases for uploads: the list of problem uploads, retry and
cancel of their forwarding (the upload domain changes the upload; this records who asked);
and the PACS targets' health (probed now; queue and outcomes from the forwarding domain).
(The console's audit log endpoints call relaypacs.audit.service; its user administration is
relaypacs.users.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.admin.schemas import BreakerState, TargetHealth, TargetHealthList
from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_alone, record_event
from relaypacs.config import Settings
from relaypacs.db import utcnow
from relaypacs.forwarding.service import target_activity
from relaypacs.forwarding.worker import Forwarder
from relaypacs.pacs.dicomweb import DicomWebClient
from relaypacs.storage import ObjectStorage
from relaypacs.uploads import service as uploads
from relaypacs.uploads.models import Upload
from relaypacs.uploads.repository import upload_prefix
from relaypacs.uploads.schemas import UploadRead, UploadSummary
from relaypacs.uploads.service import ProblemKind


async def list_problem_uploads(
    read_sessionmaker: async_sessionmaker[AsyncSession],
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    actor: Actor,
    problem: ProblemKind,
    stuck_minutes: int,
    limit: int,
    offset: int,
) -> tuple[list[UploadSummary], int]:
    """A page of the uploads with `problem`, and how many in all. Other users' study details
    are shown: a non-empty page is recorded before it is answered, once the read has given its
    connection back (never one held while waiting for another)."""
    async with read_sessionmaker() as session, session.begin():
        items, total = await uploads.list_problem_uploads(
            session, problem=problem, stuck_minutes=stuck_minutes, limit=limit, offset=offset
        )
    if items:
        await record_alone(
            sessionmaker,
            actor=actor,
            action="admin.upload_list",
            object_type="upload",
            details={"status": problem, "upload_ids": [str(u.id) for u in items]},
        )
    return items, total


async def _act_on_upload(
    sessionmaker: async_sessionmaker[AsyncSession],
    change: Callable[[AsyncSession], Awaitable[Upload]],
    *,
    actor: Actor,
    action: str,
    upload_id: uuid.UUID,
) -> UploadRead:
    """Apply an administrator's `change` to an upload and record it, in one transaction."""
    async with sessionmaker() as session, session.begin():
        upload = await change(session)
        await record_event(
            session,
            actor=actor,
            action=action,
            object_type="upload",
            object_id=upload_id,
            study_instance_uid=upload.study_instance_uid,
        )
        return await uploads.read_upload(session, upload)


async def retry_forwarding(
    sessionmaker: async_sessionmaker[AsyncSession],
    forwarder: Forwarder | None,
    *,
    actor: Actor,
    upload_id: uuid.UUID,
    settings: Settings | None = None,
) -> UploadRead:
    """Send again what failed (and anything pending) now, resetting the retry schedule (to the
    default target if its own was removed from `settings`); the forwarding worker of this
    process (if any) is woken."""
    targets = [t.name for t in settings.pacs_targets] if settings else None
    default = settings.default_target_name if settings else None
    view = await _act_on_upload(
        sessionmaker,
        lambda session: uploads.retry_forwarding(
            session, upload_id=upload_id, targets=targets, default_target=default
        ),
        actor=actor,
        action="admin.upload_retry",
        upload_id=upload_id,
    )
    if forwarder is not None:
        forwarder.wake()
    return view


async def cancel_forwarding(
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: ObjectStorage,
    *,
    actor: Actor,
    upload_id: uuid.UUID,
) -> UploadRead:
    """Stop forwarding the upload for good and delete its stored files."""
    view = await _act_on_upload(
        sessionmaker,
        lambda session: uploads.cancel_forwarding(session, upload_id=upload_id),
        actor=actor,
        action="admin.upload_cancel",
        upload_id=upload_id,
    )
    await storage.delete_prefix(upload_prefix(upload_id))
    return view


# --- the PACS targets ------------------------------------------------------------------------


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def _probe(client: DicomWebClient, within: float) -> str | None:
    try:
        async with asyncio.timeout(within):
            return await client.probe(within)
    except TimeoutError:
        return f"no answer within {within:g} s"


async def target_health(
    read_sessionmaker: async_sessionmaker[AsyncSession],
    *,
    settings: Settings,
    clients: Sequence[DicomWebClient],
    forwarder: Forwarder | None,
) -> TargetHealthList:
    """Every configured PACS target, probed now (all at once, each within the health
    timeout), with this replica's breaker and the queue the replicas share."""
    names = [t.name for t in settings.pacs_targets]
    within = settings.health_timeout_seconds
    by_name = {c.target.name: c for c in clients}
    probes = await asyncio.gather(
        *(_probe(by_name[name], within) for name in names if name in by_name)
    )
    problems = dict(zip([n for n in names if n in by_name], probes, strict=True))
    async with read_sessionmaker() as session, session.begin():
        activity = await target_activity(session, names)
    items: list[TargetHealth] = []
    for target in settings.pacs_targets:
        breaker_state: BreakerState = "not_running"
        retry_in: float | None = None
        if forwarder is not None:
            breaker = forwarder.breaker(target.name)
            state = breaker.state
            breaker_state = (
                "open" if state == "open" else "half_open" if state == "half_open" else "closed"
            )
            retry_in = round(breaker.seconds_until_retry(), 1) if state == "open" else None
        problem = problems.get(target.name, "not probed")
        act = activity[target.name]
        items.append(
            TargetHealth(
                name=target.name,
                url=_without_credentials(target.url),
                profile=target.profile,
                default=target.name == settings.default_target_name,
                reachable=problem is None,
                probe_error=problem,
                breaker=breaker_state,
                breaker_retry_seconds=retry_in,
                queued_jobs=act.queued_jobs,
                retrying_jobs=act.retrying_jobs,
                oldest_job_age_seconds=(
                    round(act.oldest_job_age_seconds, 1)
                    if act.oldest_job_age_seconds is not None
                    else None
                ),
                last_delivered_at=act.last_delivered_at,
                last_attempt_at=act.last_attempt_at,
                last_attempt_outcome=act.last_attempt_outcome,
                last_error=act.last_error,
            )
        )
    return TargetHealthList(items=items, checked_at=utcnow())
