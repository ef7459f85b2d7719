"""Tables of the upload domain: an upload (one study), its files and their stored chunks."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from relaypacs.db import Base, UTCDateTime, utcnow


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(
        cls,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
    )


class UploadStatus(enum.StrEnum):
    PENDING = "pending"  # taking chunks
    RECEIVED = "received"  # all chunks stored, being verified
    VALIDATED = "validated"  # verified (momentary: queued in the same transaction)
    REJECTED = "rejected"  # no instance passed verification, or any failed in strict mode
    QUEUED = "queued"  # waiting for the forwarder (or for the PACS to come back)
    FORWARDING = "forwarding"  # being sent to the PACS
    DELIVERED = "delivered"  # the PACS confirmed every instance (QIDO-RS)
    FAILED = "failed"  # the PACS refused some instance for good
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # abandoned: no chunk for RELAYPACS_UPLOAD_EXPIRE_HOURS; chunks deleted


# Statuses in which the study counts as accepted: a second upload of it is a duplicate.
ACCEPTED_STATUSES = (
    UploadStatus.VALIDATED,
    UploadStatus.QUEUED,
    UploadStatus.FORWARDING,
    UploadStatus.DELIVERED,
    UploadStatus.FAILED,
)
IN_PROGRESS_STATUSES = (UploadStatus.PENDING, UploadStatus.RECEIVED)


class FileStatus(enum.StrEnum):
    PENDING = "pending"
    VALID = "valid"
    REJECTED = "rejected"


class ForwardStatus(enum.StrEnum):
    PENDING = "pending"  # to send (again)
    SENT = "sent"  # the PACS answered success; not yet seen by QIDO-RS
    CONFIRMED = "confirmed"  # listed by the PACS's QIDO-RS
    FAILED = "failed"  # refused for good by the PACS (forward_error says why)


class Upload(Base):
    __tablename__ = "upload"
    __table_args__ = (
        Index("ix_upload_user_id_created_at", "user_id", "created_at"),
        Index("ix_upload_study_hash_status", "study_hash", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id"))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[UploadStatus] = mapped_column(_enum(UploadStatus), default=UploadStatus.PENDING)
    # Patient and study details as the client read them (PHI: never logged).
    study_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    chunk_size: Mapped[int] = mapped_column(Integer)
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    instance_count: Mapped[int | None] = mapped_column(Integer)
    # Strict mode: one refused file refuses the whole study (otherwise the valid instances go
    # on without the refused files: STOW-RS's partial success).
    all_or_nothing: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How many files verification refused (set with the verdicts; None before).
    refused_count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # When its stored bytes were deleted (expired, or delivered and past the retention); its
    # metadata, verdicts and receipts stay.
    purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    files: Mapped[list[UploadFile]] = relationship(
        back_populates="upload", lazy="raise", order_by="UploadFile.index"
    )


class UploadFile(Base):
    __tablename__ = "upload_file"

    upload_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("upload.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    chunk_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[FileStatus] = mapped_column(_enum(FileStatus), default=FileStatus.PENDING)
    kind: Mapped[str | None] = mapped_column(String(16))
    preamble: Mapped[str | None] = mapped_column(String(16))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    forward_status: Mapped[ForwardStatus | None] = mapped_column(_enum(ForwardStatus))
    forward_error: Mapped[str | None] = mapped_column(Text)
    # A valid file whose bytes another file of this upload also has (that one is sent).
    duplicate_of: Mapped[int | None] = mapped_column(Integer)
    # The MD5 of the bytes the PACS was sent (as sent: a zeroed preamble included), for
    # verifying what the PACS holds where it can tell its stored file's MD5 (Orthanc).
    forward_md5: Mapped[str | None] = mapped_column(String(32))

    upload: Mapped[Upload] = relationship(back_populates="files", lazy="raise")


class UploadChunk(Base):
    """A chunk durable in object storage; its row is written only after the store said so."""

    __tablename__ = "upload_chunk"
    __table_args__ = (
        ForeignKeyConstraint(
            ["upload_id", "file_index"],
            ["upload_file.upload_id", "upload_file.index"],
            ondelete="CASCADE",
        ),
    )

    upload_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    file_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    # The chunk's SHA-256 (hex), computed by the server from the bytes it stored; it names the
    # chunk's object and decides whether the same chunk sent again is the same. NULL only on
    # rows written before migration 0004, which are named and compared by their MD5.
    sha256: Mapped[str | None] = mapped_column(String(64))
    # The MD5 the client declared in Content-MD5 (checked), when it sent one.
    md5: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
