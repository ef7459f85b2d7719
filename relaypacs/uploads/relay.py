"""The upload domain's side of forwarding: an accepted upload's instances as the forwarding
worker sends them (relaypacs.forwarding.source.InstanceSource), and the uploader's notice when
its study is settled.

The worker fences every transaction it hands to these methods by its job's lease token; here
is only what the upload domain decides (its queries are in uploads.repository): the upload's
status, each file's forwarding state, the recorded chunks whose concatenation is an instance.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.forwarding.source import (
    FencedTransaction,
    ForwardCounts,
    InstanceSource,
    SentInstance,
    SettledUpload,
    Settlement,
    StudyToForward,
)
from relaypacs.notifications.service import notify
from relaypacs.pacs.dicomweb import Disposition, InstancePart, InstanceResult
from relaypacs.uploads import repository
from relaypacs.uploads.models import (
    ACCEPTED_STATUSES,
    IN_PROGRESS_STATUSES,
    ForwardStatus,
    Upload,
    UploadStatus,
)
from relaypacs.uploads.repository import read_rows, relay_rows

_STATUS_OF = {
    Disposition.STORED: ForwardStatus.SENT,
    Disposition.FAILED: ForwardStatus.FAILED,
    Disposition.RETRY: ForwardStatus.PENDING,
}


class UploadRelay(InstanceSource):
    """An upload's instances for the forwarding worker."""

    async def prepare(self, upload_id: uuid.UUID, transaction: FencedTransaction) -> None:
        """Nothing: an upload's instances are in the database and object storage already."""

    async def start(self, session: AsyncSession, upload_id: uuid.UUID) -> StudyToForward | None:
        upload = await session.get(Upload, upload_id, populate_existing=True)
        assert upload is not None
        # Still uploading (pipelined relay): the instances judged so far go; nothing settles.
        # Any other status than accepted or in progress (cancelled, rejected, ...): no more.
        settle = upload.status in ACCEPTED_STATUSES
        if not settle and upload.status not in IN_PROGRESS_STATUSES:
            return None
        if upload.status == UploadStatus.QUEUED:
            upload.status = UploadStatus.FORWARDING
        pending = await relay_rows.pending_parts(session, upload_id)
        # Every file arrived and was pipelined: the last partial batch need not wait for more.
        whole = not settle and bool(pending) and await relay_rows.all_pipelined(session, upload_id)
        return StudyToForward(
            study_instance_uid=upload.study_instance_uid,
            to_send=[
                InstancePart(
                    file_index=p.file_index,
                    sop_instance_uid=p.sop_instance_uid or "",
                    size=p.size,
                    keys=p.keys,
                    zero_preamble=p.preamble == "nonzero",
                )
                for p in pending
            ],
            sop_uids=await relay_rows.forwarded_sop_uids(session, upload_id) if settle else {},
            settle=settle,
            whole=whole,
        )

    async def sent_instances(
        self, session: AsyncSession, upload_id: uuid.UUID
    ) -> list[SentInstance]:
        files = await relay_rows.files_to_forward(
            session, upload_id, statuses=(ForwardStatus.SENT, ForwardStatus.CONFIRMED)
        )
        keys = await repository.recorded_chunk_keys(session, upload_id)
        return [
            SentInstance(
                part=_part(f, keys[f.file_index]),
                series_instance_uid=f.series_instance_uid,
                sha256=f.sha256,
                md5=f.forward_md5,
            )
            for f in files
        ]

    async def refuse(
        self, session: AsyncSession, upload_id: uuid.UUID, reasons: Mapping[int, str]
    ) -> None:
        await relay_rows.fail_forwards(session, upload_id, reasons)

    def record_answers(
        self, connection: Connection, upload_id: uuid.UUID, results: Sequence[InstanceResult]
    ) -> None:
        relay_rows.record_forward_answers(
            connection,
            upload_id,
            [
                (
                    r.file_index,
                    _STATUS_OF[r.disposition],
                    r.reason if r.disposition != Disposition.STORED else None,
                    r.md5,
                )
                for r in results
            ],
        )

    async def counts(self, session: AsyncSession, upload_id: uuid.UUID) -> ForwardCounts:
        counts = await session.run_sync(read_rows.forward_status_counts, upload_id)
        return ForwardCounts(
            pending=counts.get(ForwardStatus.PENDING, 0),
            sent=counts.get(ForwardStatus.SENT, 0),
            confirmed=counts.get(ForwardStatus.CONFIRMED, 0),
            failed=counts.get(ForwardStatus.FAILED, 0),
        )

    async def confirm_listed(
        self,
        session: AsyncSession,
        upload_id: uuid.UUID,
        *,
        sop_uids: Mapping[int, str | None],
        listed: set[str],
    ) -> int:
        answered = await relay_rows.answered_file_indexes(session, upload_id)
        # The PACS said stored but does not list it: send it again.
        unlisted = [index for index in answered if sop_uids.get(index) not in listed]
        await relay_rows.send_again(session, upload_id, unlisted, "not_listed_by_qido")
        await relay_rows.confirm_sent(session, upload_id)
        return len(unlisted)

    async def finish(
        self, session: AsyncSession, upload_id: uuid.UUID, *, delivered: bool, at: dt.datetime
    ) -> SettledUpload | None:
        upload = await session.get(Upload, upload_id)
        assert upload is not None
        if upload.status == UploadStatus.CANCELLED:
            return None
        upload.status = UploadStatus.DELIVERED if delivered else UploadStatus.FAILED
        if delivered:
            upload.delivered_at = at
        return SettledUpload(user_id=upload.user_id, study_instance_uid=upload.study_instance_uid)


def _part(file: relay_rows.FileToForward, keys: Mapping[int, str]) -> InstancePart:
    return InstancePart(
        file_index=file.file_index,
        sop_instance_uid=file.sop_instance_uid or "",
        size=file.size,
        keys=tuple(keys.values()),
        zero_preamble=file.preamble == "nonzero",
    )


async def notify_uploader(session: AsyncSession, settled: Settlement) -> None:
    """Settle hook: the uploader hears that the study was delivered, or failed for good."""
    notify(
        session,
        user_id=settled.user_id,
        kind="upload_delivered" if settled.delivered else "upload_failed",
        related_id=settled.upload_id,
        payload={
            "target": settled.target,
            "confirmed": settled.confirmed,
            "failed": settled.failed,
            "instances": settled.instances,
        },
    )
