"""The upload domain's side of forwarding: an accepted upload's instances as the forwarding
worker sends them (relaypacs.forwarding.source.InstanceSource), and the uploader's notice when
its study is settled.

The worker fences every transaction it hands to these methods by its job's lease token; here
are only the upload tables: the upload's status, each file's forward_status and forward_error,
the recorded chunks whose concatenation is an instance.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import cast

from sqlalchemy import Connection, Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.forwarding.source import (
    ForwardCounts,
    InstanceSource,
    SettledUpload,
    Settlement,
    StudyToForward,
)
from relaypacs.notifications.service import notify
from relaypacs.pacs.dicomweb import Disposition, InstancePart, InstanceResult
from relaypacs.uploads.models import ForwardStatus, Upload, UploadFile, UploadStatus
from relaypacs.uploads.repository import recorded_chunk_keys

_STATUS_OF = {
    Disposition.STORED: ForwardStatus.SENT,
    Disposition.FAILED: ForwardStatus.FAILED,
    Disposition.RETRY: ForwardStatus.PENDING,
}

_FILES = cast(Table, UploadFile.__table__)
# Core, with its own parameter names: run executemany on the worker's connection (on SQLite
# in a thread call), a row per instance of the batch.
_RECORD_ANSWER = (
    update(_FILES)
    .where(_FILES.c.upload_id == bindparam("b_upload"), _FILES.c.index == bindparam("b_index"))
    .values(forward_status=bindparam("b_status"), forward_error=bindparam("b_error"))
)


class UploadRelay(InstanceSource):
    """An upload's instances for the forwarding worker."""

    async def start(self, session: AsyncSession, upload_id: uuid.UUID) -> StudyToForward | None:
        upload = await session.get(Upload, upload_id)
        assert upload is not None
        if upload.status == UploadStatus.CANCELLED:
            return None
        if upload.status == UploadStatus.QUEUED:
            upload.status = UploadStatus.FORWARDING
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
                .where(UploadFile.upload_id == upload_id, UploadFile.forward_status.is_not(None))
                .order_by(UploadFile.index)
            )
        ).all()
        keys = await recorded_chunk_keys(session, upload_id)
        return StudyToForward(
            study_instance_uid=upload.study_instance_uid,
            to_send=[
                InstancePart(
                    file_index=index,
                    sop_instance_uid=sop or "",
                    size=size,
                    keys=tuple(keys[index].values()),
                    zero_preamble=preamble == "nonzero",
                )
                for index, sop, size, preamble, status in files
                if status == ForwardStatus.PENDING
            ],
            sop_uids={index: sop for index, sop, *_ in files},
        )

    def record_answers(
        self, connection: Connection, upload_id: uuid.UUID, results: Sequence[InstanceResult]
    ) -> None:
        connection.execute(
            _RECORD_ANSWER,
            [
                {
                    "b_upload": upload_id,
                    "b_index": r.file_index,
                    "b_status": _STATUS_OF[r.disposition],
                    "b_error": r.reason if r.disposition != Disposition.STORED else None,
                }
                for r in results
            ],
        )

    async def counts(self, session: AsyncSession, upload_id: uuid.UUID) -> ForwardCounts:
        rows = await session.execute(
            select(UploadFile.forward_status, func.count())
            .where(UploadFile.upload_id == upload_id, UploadFile.forward_status.is_not(None))
            .group_by(UploadFile.forward_status)
        )
        counts: dict[ForwardStatus | None, int] = {}
        for status, n in rows:
            counts[status] = n
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
        answered = (
            await session.execute(
                select(UploadFile.index).where(
                    UploadFile.upload_id == upload_id,
                    UploadFile.forward_status.in_((ForwardStatus.SENT, ForwardStatus.CONFIRMED)),
                )
            )
        ).scalars()
        # The PACS said stored but does not list it: send it again.
        unlisted = [index for index in answered if sop_uids.get(index) not in listed]
        if unlisted:
            await session.execute(
                update(UploadFile),
                [
                    {
                        "upload_id": upload_id,
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
                UploadFile.upload_id == upload_id,
                UploadFile.forward_status == ForwardStatus.SENT,
            )
            .values(forward_status=ForwardStatus.CONFIRMED, forward_error=None)
            .execution_options(synchronize_session=False)
        )
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
