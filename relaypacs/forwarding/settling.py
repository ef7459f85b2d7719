"""Settling a forwarding job, in the worker's transaction fenced by the job's lease token: what
QIDO-RS lists is confirmed, the content check's refusals and the registry's conflicts fail for
good, the upload is delivered or failed, and the settle hooks and the audit record follow."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.db import utcnow
from relaypacs.forwarding import repository
from relaypacs.forwarding.models import ForwardJob, JobKind
from relaypacs.forwarding.repository import Claim, Delivered
from relaypacs.forwarding.source import (
    ForwardCounts,
    InstanceSource,
    SentInstance,
    SettledUpload,
    SettleHook,
    Settlement,
)
from relaypacs.forwarding.verification import ContentCheck

SOP_INSTANCE_CONFLICT = (
    "sop_instance_conflict: the gateway delivered other bytes under this SOP Instance UID to "
    "this PACS before (a PACS keeps the first copy of an instance)"
)


def source_of(sources: Mapping[JobKind, InstanceSource], claim: Claim) -> InstanceSource:
    """Who owns the instances of the claimed job's kind."""
    source = sources.get(claim.kind)
    if source is None:
        raise RuntimeError(f"this Forwarder has no instance source for {claim.kind} jobs")
    return source


@dataclass(frozen=True)
class Settled:
    """What `settle` did. Nothing was settled when some instance is `unconfirmed` (to send
    again: the job is to be retried) or `upload` is None (cancelled meanwhile)."""

    counts: ForwardCounts
    unconfirmed: int = 0
    upload: SettledUpload | None = None
    delivered: bool = False
    at: dt.datetime | None = None


async def settle(
    session: AsyncSession,
    job: ForwardJob,
    claim: Claim,
    source: InstanceSource,
    hooks: Sequence[SettleHook],
    *,
    sop_uids: dict[int, str | None],
    listed: set[str],
    sent: Sequence[SentInstance],
    content: ContentCheck,
) -> Settled:
    """Mark what QIDO-RS lists as confirmed; deliver or fail the rest, unless some instance
    the PACS answered stored is not listed. Instances whose content is not what was sent, or
    whose UID the target holds with other bytes as delivered earlier, fail for good."""
    # The PACS said stored but does not list it: sent again (by the caller's retry).
    unconfirmed = await source.confirm_listed(
        session, claim.upload_id, sop_uids=sop_uids, listed=listed
    )
    if not unconfirmed:
        await register(session, claim, source, sent, listed, content)
    counts = await source.counts(session, claim.upload_id)
    repository.set_counts(job, counts)
    if unconfirmed:
        return Settled(counts, unconfirmed=unconfirmed)
    now = utcnow()
    delivered = counts.failed == 0
    upload = await source.finish(session, claim.upload_id, delivered=delivered, at=now)
    if upload is None:
        return Settled(counts)  # cancelled meanwhile (the cancel also took the job from us)
    repository.mark_done(job, at=now)
    if claim.kind == JobKind.STUDY:
        await run_settle_hooks(
            session, hooks, claim, upload, counts, job.stow_requests, delivered=delivered
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
    return Settled(counts, upload=upload, delivered=delivered, at=now)


async def run_settle_hooks(
    session: AsyncSession,
    hooks: Sequence[SettleHook],
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
    for hook in hooks:
        await hook(session, settlement)


async def register(
    session: AsyncSession,
    claim: Claim,
    source: InstanceSource,
    sent: Sequence[SentInstance],
    listed: set[str],
    content: ContentCheck,
) -> None:
    """Refuse the instances whose content the PACS holds otherwise, and record the rest in
    the registry of what the target holds; refuse those it records with other bytes."""
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
