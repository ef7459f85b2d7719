"""Tables of the report domain: a delivered study's report (its working copy), every signed
version of it, which modalities each radiologist reads, and the automatic assignment rule."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from relaypacs.db import Base, UTCDateTime, utcnow


class ReportStatus(enum.StrEnum):
    PENDING = "pending"  # the study is delivered; nobody reads it yet
    ASSIGNED = "assigned"  # a radiologist reads it (drafts are saved)
    READY = "ready"  # signed: version 1
    AMENDED = "amended"  # signed again: version 2 and later


SIGNED_STATUSES = frozenset({ReportStatus.READY, ReportStatus.AMENDED})


class Report(Base):
    __tablename__ = "report"
    __table_args__ = (
        Index("ix_report_radiologist_id_created_at", "radiologist_id", "created_at"),
        Index("ix_report_uploader_id_created_at", "uploader_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    upload_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("upload.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[ReportStatus] = mapped_column(
        Enum(
            ReportStatus,
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        ),
        default=ReportStatus.PENDING,
    )
    radiologist_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id"))
    # The working copy: the assigned radiologist's draft (before signing, or of an amendment).
    findings: Mapped[str | None] = mapped_column(Text)
    impression: Mapped[str | None] = mapped_column(Text)
    pdf_key: Mapped[str | None] = mapped_column(String(512))
    pacs_receipt_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    ready_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Copied from the upload when the report opens (the worklist filters on them without
    # reading the upload domain's tables). PHI: never logged.
    uploader_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id"))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(16))
    study_metadata: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSON, default=dict, server_default="{}"
    )
    # Lower-case patient name and id, accession number, description: the worklist's text filter.
    search_text: Mapped[str | None] = mapped_column(Text)
    assigned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ReportVersion(Base):
    """A signed version: never changed, never deleted (an amendment adds the next one)."""

    __tablename__ = "report_version"
    __table_args__ = (UniqueConstraint("report_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    report_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("report.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    findings: Mapped[str] = mapped_column(Text)
    impression: Mapped[str] = mapped_column(Text)
    # Who signed it in the gateway; None for a report the PACS gave (source "pacs").
    signed_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user.id"))
    signed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Why it was amended (None for the first version).
    reason: Mapped[str | None] = mapped_column(Text)
    # Where it was written: "gateway" (signed here) or "pacs" (found in the PACS by the sync,
    # source_instance_uid the SOP Instance UID of the SR or Encapsulated PDF it came from).
    source: Mapped[str] = mapped_column(String(16), default="gateway", server_default="gateway")
    source_instance_uid: Mapped[str | None] = mapped_column(String(64))


class RadiologistModality(Base):
    """A radiologist reads studies of this modality (the automatic assignment's rule)."""

    __tablename__ = "radiologist_modality"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    modality: Mapped[str] = mapped_column(String(16), primary_key=True)


class AssignmentRule(Base):
    """The automatic assignment rule, one row (id 1) once an administrator has set it; until
    then RELAYPACS_REPORT_AUTO_ASSIGN decides (round robin by modality, or off)."""

    __tablename__ = "assignment_rule"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    enabled: Mapped[bool] = mapped_column(Boolean)
    # Round robin among the active radiologists who read the study's modality (all of them
    # when none does); False: among all active radiologists.
    by_modality: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who set it (no foreign key: the audit log names them too, and outlives accounts).
    updated_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class CopyStatus(enum.StrEnum):
    PENDING = "pending"  # to send
    SENT = "sent"  # the PACS answered stored; not yet listed by QIDO-RS
    CONFIRMED = "confirmed"  # listed by QIDO-RS: the PACS holds it
    FAILED = "failed"  # refused for good


class ReportPacsCopy(Base):
    """A signed version written back to the PACS: an Encapsulated PDF instance of its PDF in
    the report's study (built once, kept in object storage, sent by the forwarding worker as a
    `report` job). Its SOP Instance UID is the version's receipt once the PACS lists it."""

    __tablename__ = "report_pacs_copy"

    report_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("report.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    md5: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=CopyStatus.PENDING.value)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the PACS listed it (confirmed) or refused it for good: audited once, then.
    settled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # When retention deleted the gateway's copies of this confirmed version (the Encapsulated
    # PDF instance and the version's PDF) after the study's bytes were purged: the PACS holds
    # it; the PDF is made again from the signed version in the database when asked for.
    released_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class PacsInstanceOutcome(enum.StrEnum):
    USED = "used"  # the report was made ready from it
    SKIPPED = "skipped"  # unusable (reason): looked at once, not again


class ReportPacsInstance(Base):
    """A report instance (SR or Encapsulated PDF) the sync found in the PACS for a report,
    and what became of it: each is looked at once."""

    __tablename__ = "report_pacs_instance"

    report_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("report.id", ondelete="CASCADE"), primary_key=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
