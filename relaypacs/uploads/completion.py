"""Completing an upload: check that every acknowledged chunk is there (and still stored),
verify every file, judge each against what the target already holds, and accept the valid
instances (queued for the PACS in the same transaction) or reject the study; and the scheduled
check that finds chunks the storage lost before their upload completes."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, replace

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.service import record_event
from relaypacs.auth.models import User
from relaypacs.db import Database
from relaypacs.forwarding import service as forwarding
from relaypacs.storage import ObjectStorage
from relaypacs.telemetry.metrics import (
    CHUNKS_LOST,
    FILES_ACCEPTED,
    FILES_REFUSED,
    VALIDATION_DURATION,
    VALIDATION_REFUSALS,
)
from relaypacs.uploads import repository
from relaypacs.uploads.errors import UploadIncomplete, UploadNotWritable, UploadRejected
from relaypacs.uploads.models import ACCEPTED_STATUSES, UploadStatus
from relaypacs.uploads.notices import notify_judged, notify_received
from relaypacs.uploads.repository import relay_rows
from relaypacs.uploads.schemas import FileError, UploadRead
from relaypacs.uploads.verify import FileVerdict, StudyVerifier
from relaypacs.uploads.views import get_upload, read_upload

logger = logging.getLogger("relaypacs.uploads")


@dataclass(frozen=True, eq=False, kw_only=True)
class CompleteContext:
    db: Database
    storage: ObjectStorage  # where the chunks are: each is checked to be there before verifying
    verifier: StudyVerifier
    default_target: str | None = None  # the PACS that accepted studies are queued for
    # Targets that take a study whole or not at all (one refused file refuses it).
    strict_targets: frozenset[str] = frozenset()
    on_queued: Callable[[], None] | None = None  # a study was queued: wake the forwarder


async def lost_chunks(
    storage: ObjectStorage, upload_id: uuid.UUID, recorded: Mapping[int, Mapping[int, str]]
) -> dict[int, list[int]]:
    """The recorded chunks whose objects the storage does not hold (by file index), from one
    listing of the upload's objects."""
    present = {key async for key in storage.list(repository.upload_prefix(upload_id))}
    lost = {
        file_index: sorted(c for c, key in by_chunk.items() if key not in present)
        for file_index, by_chunk in recorded.items()
    }
    return {file_index: chunks for file_index, chunks in lost.items() if chunks}


def _chunks_lost(upload_id: uuid.UUID, lost: Mapping[int, list[int]]) -> UploadIncomplete:
    count = sum(len(chunks) for chunks in lost.values())
    CHUNKS_LOST.inc(count)
    # The upload's id only: which study it is stays in the database.
    logger.error(
        "storage lost %d acknowledged chunks of upload %s (restored or emptied?): "
        "forgotten, the client is asked for them again",
        count,
        upload_id,
    )
    return UploadIncomplete(
        f"The gateway's storage lost {count} chunks it had acknowledged; send them again.",
        details={
            "missing": [
                {"file_index": index, "missing_chunks": chunks} for index, chunks in lost.items()
            ],
            "lost": True,
        },
    )


async def complete_upload(
    ctx: CompleteContext, *, user: User, upload_id: uuid.UUID, client_ip: str | None
) -> UploadRead:
    """Check that all chunks are there, verify every file, and accept or reject the study.

    No transaction is held while the files are verified. A crash during verification leaves the
    upload `received`; completing it again verifies it again.
    """
    async with ctx.db.sessionmaker() as session, session.begin():
        upload = await get_upload(session, upload_id=upload_id, user=user, write=True)
        if upload.status in ACCEPTED_STATUSES:
            return await read_upload(session, upload)
        if upload.status == UploadStatus.REJECTED:
            raise _rejection(await read_upload(session, upload))
        if upload.status == UploadStatus.CANCELLED:
            raise UploadNotWritable("This upload was cancelled.")
        if upload.status == UploadStatus.EXPIRED:
            raise UploadNotWritable("This upload expired unfinished; start it again.")
        files = await repository.files_to_verify(session, upload_id)
        recorded = await repository.recorded_chunk_keys(session, upload_id)
        missing = {
            f.index: [i for i in range(f.chunk_count) if i not in recorded[f.index]]
            for f in files
            if len(recorded[f.index]) < f.chunk_count
        }
        if missing:
            raise UploadIncomplete(
                f"{sum(len(m) for m in missing.values())} chunks are missing.",
                details={
                    "missing": [
                        {"file_index": index, "missing_chunks": absent}
                        for index, absent in missing.items()
                    ]
                },
            )
        # Every recorded chunk must still be in storage: an object store restored from an
        # older copy, or emptied, loses chunks it had acknowledged. Those are forgotten (the
        # status asks the client for them again) and the upload stays pending.
        lost = await lost_chunks(ctx.storage, upload_id, recorded)
        if lost:
            await repository.forget_chunks(session, upload_id, lost)
        else:
            if upload.status == UploadStatus.PENDING:  # not again after a crash in `received`
                notify_received(session, upload)
            upload.status = UploadStatus.RECEIVED
        keys = {index: list(by_chunk.values()) for index, by_chunk in recorded.items()}
        del recorded
        declared_uid = upload.study_instance_uid
        all_or_nothing = upload.all_or_nothing
    if lost:  # committed: the lost chunks are missing now
        raise _chunks_lost(upload_id, lost)
    # The instances queued for the PACS while uploading (pipelined relay): none can be added
    # now that the upload is `received` (uploads.pipeline takes the upload's row first).
    async with ctx.db.read_sessionmaker() as session, session.begin():
        pipelined = await relay_rows.pipelined_indexes(session, upload_id)

    began = time.perf_counter()
    verdicts = await ctx.verifier.verify(
        upload_id, declared_uid=declared_uid, files=files, keys=keys, forwarded=pipelined
    )
    VALIDATION_DURATION.observe(time.perf_counter() - began)
    target = ctx.default_target

    async with ctx.db.sessionmaker() as session, session.begin():
        delivered: dict[int, forwarding.DeliveredContent] = {}
        if target is not None:
            sha256 = {f.index: f.sha256 for f in files}
            verdicts, delivered = await _against_target(
                session, user, target, verdicts, sha256, pipelined
            )
        rejected = [v for v in verdicts if v.error is not None]
        forwarded = sum(1 for v in verdicts if v.to_forward)
        strict = all_or_nothing or target in ctx.strict_targets
        refused_all = bool(rejected) and (strict or forwarded == 0)
        final = UploadStatus.REJECTED if refused_all else UploadStatus.VALIDATED
        queue = final == UploadStatus.VALIDATED and target is not None
        instances = forwarded  # distinct valid instances: those the PACS is to hold
        # Compare-and-set first: only the `complete` that moves the upload out of `received`
        # writes the verdicts. A concurrent one (two clients, a resend after a timeout) that
        # verified the same files writes nothing: it would set every file's forwarding state
        # back to pending under a relay already under way.
        moved = await repository.finish_verification(
            session,
            upload_id,
            status=UploadStatus.QUEUED if queue else final,
            instance_count=instances,
            refused_count=len(rejected),
            all_or_nothing=strict,
        )
        at_pacs = 0
        if moved:
            await repository.record_verdicts(
                session,
                upload_id,
                verdicts,
                forward=not refused_all,
                delivered=delivered,
                pipelined=pipelined,
            )
            notify_judged(
                session,
                user_id=user.id,
                upload_id=upload_id,
                rejected=refused_all,
                instances=instances,
                refused=len(rejected),
            )
            if pipelined and not queue:  # rejected after all: the pipelined job stops
                at_pacs = await relay_rows.at_pacs_count(session, upload_id)
                await forwarding.cancel(session, upload_id=upload_id)
        audit = functools.partial(
            record_event,
            session,
            actor=user.actor(client_ip),
            object_type="upload",
            object_id=upload_id,
            study_instance_uid=declared_uid,
        )
        if moved and queue:
            # The outbox: the job exists if and only if this transaction commits.
            assert target is not None
            if pipelined:  # its job exists: it waits, parked, for the rest
                await forwarding.enqueue_or_wake(session, upload_id=upload_id, target=target)
            else:
                forwarding.enqueue(session, upload_id=upload_id, target=target)
        if moved:
            for v in verdicts:
                if v.summary is not None and v.summary.preamble == "nonzero" and v.error is None:
                    await audit(
                        action="dicom.preamble_nonzero",
                        details={"file_index": v.index, "handling": "zeroed_on_forward"},
                    )
            outcome = "rejected" if refused_all else "partial" if rejected else "success"
            await audit(
                action="upload.complete",
                outcome=outcome,
                details={
                    "instances": instances,
                    "accepted_files": 0 if refused_all else len(verdicts) - len(rejected),
                    "rejected_files": len(rejected),
                    "already_delivered": len(delivered),
                    "all_or_nothing": strict,
                    "codes": sorted({v.error.code for v in rejected if v.error}),
                    "pipelined": len(pipelined),
                }
                | ({"already_at_pacs": at_pacs} if at_pacs else {}),
            )
        queued = moved and queue
        judged = (0 if refused_all else len(verdicts) - len(rejected), len(rejected), moved)
    if judged[2]:  # committed: the files' verdicts count once, by the complete that wrote them
        FILES_ACCEPTED.inc(judged[0])
        FILES_REFUSED.inc(judged[1])
        for verdict in verdicts:
            if verdict.error is not None:
                VALIDATION_REFUSALS.labels(verdict.error.code).inc()
    # Committed: the forwarder starts now, while the answer (every file) is being built.
    if queued and ctx.on_queued is not None:
        ctx.on_queued()
    async with ctx.db.read_sessionmaker() as session, session.begin():
        finished = await session.run_sync(repository.find_upload, upload_id)
        assert finished is not None
        # Accepted: every chunk was found above (the chunk rows need not be read again).
        view = await read_upload(
            session, finished, chunks_complete=finished.status in ACCEPTED_STATUSES
        )
    if view.status == UploadStatus.REJECTED:
        raise _rejection(view)
    if view.status not in ACCEPTED_STATUSES:
        raise UploadNotWritable(f"This upload is {view.status.value}.")
    return view


async def _against_target(
    session: AsyncSession,
    user: User,
    target: str,
    verdicts: list[FileVerdict],
    sha256: dict[int, str],
    pipelined: Set[int],
) -> tuple[list[FileVerdict], dict[int, forwarding.DeliveredContent]]:
    """The verdicts against what the target holds as delivered by the gateway: an instance
    whose SOP Instance UID it holds with other bytes is refused (`sop_instance_conflict`); one
    it holds with the same bytes is not sent again (returned by file index: the forwarding
    only verifies that the PACS still lists it). The pipelined instances were judged so on
    arrival (and are on their way): the settling registry judges them again."""
    sops = {
        v.index: v.summary.sop_instance_uid
        for v in verdicts
        if v.to_forward and v.summary and v.index not in pipelined
    }
    known = await forwarding.delivered_contents(
        session, target=target, sop_instance_uids=[uid for uid in sops.values() if uid]
    )
    if not known:
        return verdicts, {}
    owners = await repository.upload_owners(session, [k.upload_id for k in known.values()])
    judged: list[FileVerdict] = []
    delivered: dict[int, forwarding.DeliveredContent] = {}
    for verdict in verdicts:
        content = known.get(sops.get(verdict.index) or "")
        if content is None:
            judged.append(verdict)
        elif content.sha256 == sha256[verdict.index]:
            delivered[verdict.index] = content
            judged.append(verdict)
        else:
            yours = owners.get(content.upload_id) == user.id
            where = f" by your upload {content.upload_id}" if yours else ""
            conflict = FileError(
                code="sop_instance_conflict",
                message=f"The PACS ({target}) already holds an instance with this SOP Instance "
                f"UID and other content, delivered through the gateway on "
                f"{content.delivered_at:%Y-%m-%d}{where}. It is not sent: a PACS keeps the "
                "first copy of an instance, so this one would never be what it holds.",
            )
            judged.append(replace(verdict, error=conflict))
    return judged, delivered


def _rejection(view: UploadRead) -> UploadRejected:
    files = [
        {"index": f.index, "name": f.name, "code": f.error.code, "message": f.error.message}
        for f in view.files or ()
        if f.error is not None
    ]
    why = (
        "; the study is taken all or nothing"
        if view.all_or_nothing and len(files) < view.file_count
        else ""
    )
    return UploadRejected(
        f"{len(files)} of {view.file_count} files failed verification{why}.",
        details={"files": files, "upload": view.model_dump(mode="json", exclude={"files"})},
    )


# --- the scheduled check of stored chunks -----------------------------------------------------


async def check_stored_chunks(db: Database, storage: ObjectStorage, *, limit: int = 500) -> int:
    """Find chunks of unfinished uploads that the storage lost (it was restored from an older
    copy, or emptied) and forget them, so that the status asks the clients for them again
    before they complete. Returns how many were forgotten.

    The rows are read before the objects are listed: a chunk's object is stored before its row
    is written, so a recorded chunk absent from the listing is lost, not on its way."""
    async with db.read_sessionmaker() as session, session.begin():
        pending = await repository.pending_upload_ids(session, limit=limit)
    forgotten = 0
    for upload_id in pending:
        async with db.read_sessionmaker() as session, session.begin():
            recorded = await repository.recorded_chunk_keys(session, upload_id)
        if not recorded:
            continue
        lost = await lost_chunks(storage, upload_id, recorded)
        if not lost:
            continue
        async with db.sessionmaker() as session, session.begin():
            upload = await session.run_sync(repository.find_upload, upload_id, lock=True)
            if upload is None or upload.status != UploadStatus.PENDING:
                continue
            await repository.forget_chunks(session, upload_id, lost)
        _chunks_lost(upload_id, lost)  # counted and logged
        forgotten += sum(len(chunks) for chunks in lost.values())
    return forgotten
