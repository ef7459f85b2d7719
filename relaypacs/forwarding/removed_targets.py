"""The jobs of a PACS target no longer configured: no worker would ever claim them (they would
wait forever), so a worker, while idle, fails them (docs/operations.md, Degradation)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.config import Settings
from relaypacs.db import utcnow
from relaypacs.forwarding import repository
from relaypacs.forwarding.errors import LeaseLost
from relaypacs.forwarding.models import JobKind
from relaypacs.forwarding.service import TARGET_REMOVED
from relaypacs.forwarding.settling import run_settle_hooks, source_of
from relaypacs.forwarding.source import InstanceSource, SettleHook

logger = logging.getLogger(__name__)


class RemovedTargets:
    """Fails the due jobs whose target is not one of `targets`, as the worker `owner`."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        targets: Sequence[str],
        owner: str,
        sources: Mapping[JobKind, InstanceSource],
        settle_hooks: Sequence[SettleHook],
    ) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._targets = list(targets)
        self._owner = owner
        self._sources = sources
        self._settle_hooks = settle_hooks
        self._lease = dt.timedelta(seconds=settings.forward_lease_seconds)
        self._checked_at = -float("inf")  # when jobs of removed targets were last looked for

    async def sweep(self, stopping: Callable[[], bool]) -> None:
        """While idle, at most every few polls: fail the jobs whose PACS target was removed
        from the settings, until there is none left (or `stopping()`)."""
        now = asyncio.get_running_loop().time()
        if now - self._checked_at < max(10 * self._settings.forward_poll_seconds, 10.0):
            return
        self._checked_at = now
        try:
            while not stopping() and await self.fail_one():
                pass
        except LeaseLost:
            pass
        except Exception as exc:
            logger.warning("failing the jobs of removed targets: %s", type(exc).__name__)

    async def fail_one(self) -> bool:
        """Fail one due job whose target is not configured here and that no worker touched for
        RELAYPACS_FORWARD_REMOVED_TARGET_GRACE_SECONDS (False: none). A study job fails its
        upload (the uploader is told, as for a PACS's refusal); a report job leaves the report
        signed, unwritten. Both are audited `forward.failed` with the reason `target_removed`."""
        grace = dt.timedelta(seconds=self._settings.forward_removed_target_grace_seconds)
        async with self._sessionmaker() as session, session.begin():
            claim = await repository.claim_removed_target(
                session,
                targets=self._targets,
                owner=self._owner,
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
                source = source_of(self._sources, claim)
                counts = await source.counts(session, claim.upload_id)
                repository.set_counts(job, counts)
                upload = await source.finish(session, claim.upload_id, delivered=False, at=now)
                if upload is None:  # cancelled meanwhile
                    repository.mark_cancelled(job)
                    return True
            repository.mark_abandoned(job, at=now, reason=reason)
            if upload is not None and counts is not None:
                await run_settle_hooks(
                    session,
                    self._settle_hooks,
                    claim,
                    upload,
                    counts,
                    job.stow_requests,
                    delivered=False,
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
