"""The forwarding queue: one job per upload and target, written with the status making it due."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from relaypacs.db import Base, UTCDateTime, utcnow


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  # due at next_attempt_at (claimable when its lease is free)
    DONE = "done"  # delivered, or failed for good: nothing more to send
    CANCELLED = "cancelled"


class JobKind(enum.StrEnum):
    STUDY = "study"  # the upload's instances
    REPORT = "report"  # the signed versions of its report, as Encapsulated PDF instances


class ForwardJob(Base):
    """The outbox row: created in the transaction that accepts the upload.

    A worker claims it by taking a lease (lease_owner, lease_until) and bumping lease_token;
    every write of the worker is fenced by that token, so a worker whose lease expired (it
    froze, its process died) can never overwrite the work of the one that took over.
    """

    __tablename__ = "forward_job"
    __table_args__ = (
        UniqueConstraint("upload_id", "target", "kind"),
        Index("ix_forward_job_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    upload_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("upload.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(64))
    kind: Mapped[JobKind] = mapped_column(
        Enum(
            JobKind,
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        ),
        default=JobKind.STUDY,
        server_default=JobKind.STUDY.value,
    )
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus,
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        ),
        default=JobStatus.QUEUED,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The X-Request-ID of the request that queued it (the upload's `complete`): the worker logs
    # under it and sends it to the PACS, so one id follows the study from the client's request
    # to the PACS's log.
    request_id: Mapped[str | None] = mapped_column(String(64))
    sent_count: Mapped[int] = mapped_column(Integer, default=0)
    confirmed_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    stow_requests: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class DeliveredInstance(Base):
    """What a target holds, as far as the gateway delivered it: the content (SHA-256 of the
    uploaded file; the MD5 of the bytes sent) of every SOP instance it delivered there and
    the PACS confirmed. A later instance with the same UID and other bytes is a conflict, never
    "confirmed"; one with the same bytes is not sent again."""

    __tablename__ = "delivered_instance"

    target: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    md5: Mapped[str | None] = mapped_column(String(32))
    # The upload that delivered it first (no foreign key: the record outlives the upload).
    upload_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    delivered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
