"""The pipelined relay (RELAYPACS_PIPELINE): an instance whose verdict is final on arrival is
queued for the PACS while the rest of its study is still uploading.

The early verifier (uploads.early) checks a file of one chunk as soon as that chunk is durable;
its result comes here. The instance is final, and is written as judged and to forward in one
transaction with its upload's forward job (the outbox: opened, or woken when it waits), when:
- the upload is still `pending`, and takes its study as it comes (not all or nothing: neither
  the upload nor the target is strict; such a study is judged whole at `complete`);
- the file's SHA-256, computed by the gateway from the bytes it stored, is the manifest's;
- it is valid DICOM, an instance (not a DICOMDIR) of the study the upload declared;
- its SOP Instance UID is not that of another file of the upload judged so far (nor of another
  file of the same batch), and the target holds no instance under it that the gateway
  delivered (the same bytes or other ones: `complete` judges those, as before).
The upload row is locked (FOR UPDATE on PostgreSQL) for the judgement, so two replicas never
pipeline two files of one SOP Instance UID, and a `cancel` or `complete` takes its turn.

Anything else is left to `complete`, which judges every file as before (the pipelined ones
kept: see verify.judge_study and docs/api.md for a later duplicate, a cancel). The forwarding
worker sends what is queued in passes and waits (parked) between them; it verifies (QIDO-RS)
and settles only once the upload has been accepted whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.db import Database
from relaypacs.forwarding import service as forwarding
from relaypacs.telemetry.metrics import FILES_PIPELINED
from relaypacs.uploads import repository
from relaypacs.uploads.early import EarlyResult
from relaypacs.uploads.models import UploadStatus
from relaypacs.uploads.repository import relay_rows
from relaypacs.uploads.verify import FileVerdict

logger = logging.getLogger("relaypacs.uploads")


@dataclass(eq=False, kw_only=True)
class Pipeline:
    db: Database
    target: str | None  # the PACS that accepted studies are queued for
    strict_targets: frozenset[str] = frozenset()
    on_queued: Callable[[], None] | None = None  # instances were queued: wake the forwarder
    # The job is woken when this many instances wait (the target's instances per request):
    # while the study uploads the worker sends full requests only, so fewer would only cost
    # it a claim and a park.
    wake_at: int = 1
    # Early results are judged together, in one transaction per `flush_at` of them (or once
    # the oldest has waited `flush_after` seconds): one per early batch cost more CPU than the
    # pipelining saved. What is still buffered when the upload completes (or when the process
    # stops) is simply judged by `complete`.
    flush_at: int = 50
    flush_after: float = 0.5
    _buffers: dict[uuid.UUID, list[tuple[int, EarlyResult]]] = field(default_factory=dict)
    _timers: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.target is not None and self.target not in self.strict_targets

    async def verified(self, upload_id: uuid.UUID, results: list[tuple[int, EarlyResult]]) -> None:
        """Early results of this upload's files (by index): buffered, then judged."""
        buffer = self._buffers.setdefault(upload_id, [])
        buffer.extend(results)
        if len(buffer) >= self.flush_at:
            await self._flush(upload_id)
        elif upload_id not in self._timers:
            self._timers[upload_id] = asyncio.create_task(self._flush_later(upload_id))

    async def close(self) -> None:
        timers, self._timers = list(self._timers.values()), {}
        for task in timers:
            task.cancel()
        for task in timers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._buffers.clear()

    async def _flush_later(self, upload_id: uuid.UUID) -> None:
        await asyncio.sleep(self.flush_after)
        self._timers.pop(upload_id, None)
        try:
            await self._flush(upload_id)
        except Exception as exc:  # an optimisation: complete judges what was not pipelined
            logger.warning(
                "pipelining files of upload %s failed: %s", upload_id, type(exc).__name__
            )

    async def _flush(self, upload_id: uuid.UUID) -> None:
        timer = self._timers.pop(upload_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        results = self._buffers.pop(upload_id, [])
        if results:
            await self.judge(upload_id, results)

    async def judge(self, upload_id: uuid.UUID, results: list[tuple[int, EarlyResult]]) -> None:
        """Early results of this upload's files (by index): queue the final ones for the PACS."""
        target = self.target
        if target is None or target in self.strict_targets:
            return
        candidates = {
            index: result
            for index, result in results
            if result.summary is not None
            and result.summary.kind == "instance"
            and result.summary.sop_instance_uid
        }
        if not candidates:
            return
        async with self.db.sessionmaker() as session, session.begin():
            upload = await session.run_sync(repository.find_upload, upload_id, lock=True)
            if upload is None or upload.status != UploadStatus.PENDING or upload.all_or_nothing:
                return
            files = await relay_rows.arrived_files(session, upload_id, list(candidates))
            final: dict[int, EarlyResult] = {}
            for index, result in candidates.items():
                file = files.get(index)
                summary = result.summary
                assert summary is not None
                if (
                    file is not None
                    and file.forward_status is None
                    and file.sha256 == result.sha256
                    and summary.study_instance_uid == upload.study_instance_uid
                ):
                    final[index] = result
            uid_of = {i: r.summary.sop_instance_uid or "" for i, r in final.items() if r.summary}
            twice = {uid for uid, n in Counter(uid_of.values()).items() if n > 1}
            taken = await relay_rows.sop_uids_in_upload(session, upload_id, list(uid_of.values()))
            held = await forwarding.delivered_contents(
                session, target=target, sop_instance_uids=list(uid_of.values())
            )
            queued = [
                FileVerdict(index, final[index].summary, None)
                for index, uid in sorted(uid_of.items())
                if uid not in twice and uid not in taken and uid not in held
            ]
            if not queued:
                return
            await repository.record_verdicts(session, upload_id, queued, forward=True, delivered={})
            # The upload's row is locked: the count sees every earlier pipelining commit. Fewer
            # than a request are due too once every file of the manifest is pipelined: nothing
            # more comes before `complete`, so the last partial batch goes now.
            pending = await relay_rows.pending_count(session, upload_id)
            due = pending >= self.wake_at or (
                pending > 0 and await relay_rows.all_pipelined(session, upload_id)
            )
            opened = await forwarding.send_while_uploading(
                session, upload_id=upload_id, target=target, due=due
            )
            if opened:
                await record_event(
                    session,
                    actor=SYSTEM,
                    action="forward.pipelined",
                    object_type="upload",
                    object_id=upload_id,
                    study_instance_uid=upload.study_instance_uid,
                    details={"target": target, "instances": len(queued)},
                )
        FILES_PIPELINED.inc(len(queued))
        if due and self.on_queued is not None:
            self.on_queued()
