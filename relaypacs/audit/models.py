"""The append-only audit log: who did what to which object, when, from where, with what outcome;
and the Actor, the "who" and "from where" of a record."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from relaypacs.db import Base, UTCDateTime, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_actor_id_at", "actor_id", "at"),
        Index("ix_audit_event_object_id_at", "object_id", "at"),
        Index("ix_audit_event_action_at", "action", "at"),
    )

    # BigInteger on PostgreSQL, INTEGER on SQLite (only INTEGER PRIMARY KEY autoincrements there).
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # No foreign key on purpose: the record outlives users and objects.
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    # Ids, codes and counts only: never patient names or other PHI.
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The hash chain (relaypacs/audit/chain.py): the predecessor's hash, and this record's.
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted and from where, as a record names them: plain values (the audit log knows
    nothing of the auth domain's users). Bound once per request (auth's `ActorDep`) and passed
    to every record of it. All None: the system itself (the command line, the first start)."""

    id: uuid.UUID | None = None
    role: str | None = None
    client_ip: str | None = None


SYSTEM = Actor()
