"""The audit log's hash chain: each record carries the SHA-256 of its predecessor's hash and of
its own content (a canonical encoding), so that editing, deleting, replacing or reordering a
record breaks the chain at that record, and a truncated tail shows against a chain head noted
earlier (logged periodically, or kept by an outside sink).

Pure functions: computing a link, encoding a record, walking a chain. Reading and writing the
log happen in relaypacs/audit/repository.py, which serialises writers so the chain is one
line."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, fields
from typing import Any

GENESIS = "0" * 64  # the predecessor of the first record


@dataclass(frozen=True)
class ChainedRecord:
    """What the chain covers of one record (everything but its own hashes)."""

    id: int | None  # None: not inserted yet
    at: dt.datetime
    actor_id: uuid.UUID | None
    actor_role: str | None
    action: str
    object_type: str | None
    object_id: str | None
    study_instance_uid: str | None
    outcome: str
    client_ip: str | None
    details: dict[str, Any]
    prev_hash: str | None
    hash: str | None

    @classmethod
    def of(cls, record: Any) -> ChainedRecord:
        """From an audit_event row or AuditEvent object (any object with its columns)."""
        return cls(**{name: getattr(record, name) for name in FIELDS})


def canonical(record: ChainedRecord) -> bytes:
    """The record's content as bytes that do not depend on the database that stored it: keys
    sorted, times in UTC with microseconds, ids as text. The row id is left out (a sequence may
    skip numbers); the order of the chain is its links."""
    at = record.at if record.at.tzinfo is None else record.at.astimezone(dt.UTC)  # naive: UTC
    at_text = at.replace(tzinfo=None).isoformat(timespec="microseconds")
    content = {
        "at": at_text,
        "actor_id": str(record.actor_id) if record.actor_id is not None else None,
        "actor_role": record.actor_role,
        "action": record.action,
        "object_type": record.object_type,
        "object_id": record.object_id,
        "study_instance_uid": record.study_instance_uid,
        "outcome": record.outcome,
        "client_ip": record.client_ip,
        "details": record.details,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def link(prev_hash: str, record: ChainedRecord) -> str:
    """The hash of `record` following `prev_hash`."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(record)).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    records: int
    head_id: int | None
    head_hash: str | None
    broken_at: int | None = None  # the id of the first record whose link does not hold
    reason: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


class ChainWalk:
    """Checks records fed in id order, one at a time (constant memory). Each must name its
    predecessor's hash (the first: GENESIS) and carry the hash of its own content.
    `expected_head` (an id and hash noted earlier): that record must still be there with that
    hash, or the log was cut or rewritten since."""

    def __init__(self, expected_head: tuple[int, str] | None = None) -> None:
        self.expected_head = expected_head
        self.count = 0
        self.prev = GENESIS
        self.last: ChainedRecord | None = None
        self.head_seen = expected_head is None
        self.broken: ChainReport | None = None

    def feed(self, record: ChainedRecord) -> bool:
        """False once the chain is broken (the report says where)."""
        if self.broken is not None:
            return False
        self.count += 1
        reason = None
        if record.prev_hash != self.prev:
            reason = (
                "the first record does not start the chain (records before it are missing)"
                if self.last is None
                else "a record before it is missing or was changed"
            )
        elif record.hash != link(self.prev, record):
            reason = "its content was changed"
        elif self.expected_head is not None and record.id == self.expected_head[0]:
            if record.hash != self.expected_head[1]:
                reason = "it is not the record noted earlier"
            self.head_seen = True
        if reason is not None:
            self.broken = ChainReport(self.count, record.id, record.hash, record.id, reason)
            return False
        assert record.hash is not None
        self.prev = record.hash
        self.last = record
        return True

    def report(self) -> ChainReport:
        if self.broken is not None:
            return self.broken
        last = self.last
        head_id, head_hash = (last.id, last.hash) if last else (None, None)
        if not self.head_seen:
            assert self.expected_head is not None
            return ChainReport(
                self.count,
                head_id,
                head_hash,
                self.expected_head[0],
                "the log ends before the record noted earlier: it was truncated",
            )
        return ChainReport(self.count, head_id, head_hash)


FIELDS = [f.name for f in fields(ChainedRecord)]
