"""What the forwarding worker needs from the domain that owns the instances it sends.

The worker sits below the upload domain: it never reads the upload tables. Whoever owns the
instances (relaypacs/uploads/relay.py) implements `InstanceSource`, and main.py hands it to the
Forwarder together with the settle hooks (what else happens when a study is settled: a report
is opened, the uploader is notified). Every method runs in a transaction of the worker whose
first statement fenced the job by its lease token, so a worker that lost its lease writes
nothing through the source either. Nothing the worker hands a source a session for may wait
on the network: a transaction open while a PACS hangs holds the write lock of SQLite (every
upload, chunk and login of the gateway waits) or row locks and a connection on PostgreSQL.
Whatever a source must fetch or store elsewhere first, it does in `prepare`, between short
transactions of its own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.pacs.dicomweb import InstancePart, InstanceResult


@dataclass(frozen=True)
class StudyToForward:
    """An upload being forwarded: what is still to send, and every instance it has."""

    study_instance_uid: str
    to_send: list[InstancePart]  # in file order
    sop_uids: dict[int, str | None]  # every instance to forward, by file index
    # False while the upload is still uploading (pipelined relay): what is to send goes, then
    # the job waits for more (parked); nothing is verified or settled before the upload has
    # been accepted whole (and `sop_uids` may be left empty until then).
    settle: bool = True
    # While still uploading: every instance that can go before `complete` is among those to
    # send (every file of the manifest arrived and was judged final on arrival), so a last
    # partial batch goes now rather than wait for more.
    whole: bool = False

    @property
    def instances(self) -> int:
        return len(self.sop_uids)


@dataclass(frozen=True)
class SentInstance:
    """An instance the PACS answered stored: what verifying its content needs."""

    part: InstancePart  # its stored bytes, as sent
    series_instance_uid: str | None
    sha256: str  # of the uploaded file
    md5: str | None  # of the bytes sent, where recorded


@dataclass(frozen=True)
class ForwardCounts:
    """An upload's instances by forwarding state."""

    pending: int = 0
    sent: int = 0  # answered stored, not yet listed by QIDO-RS
    confirmed: int = 0
    failed: int = 0

    @property
    def instances(self) -> int:
        return self.pending + self.sent + self.confirmed + self.failed


@dataclass(frozen=True)
class SettledUpload:
    """The upload whose forwarding was just settled."""

    user_id: uuid.UUID
    study_instance_uid: str


# A transaction fenced by the job's lease token (LeaseLost if the job is no longer ours): each
# `async with transaction() as session` is one transaction, committed when the block ends.
FencedTransaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]


class InstanceSource(Protocol):
    async def prepare(self, upload_id: uuid.UUID, transaction: FencedTransaction) -> None:
        """Before each pass, with no transaction open: what `start` needs that takes the network
        (a PACS query, objects stored), done between short transactions of `transaction`, the
        last of which writes the result (so a worker that lost its lease writes nothing)."""
        ...

    async def start(self, session: AsyncSession, upload_id: uuid.UUID) -> StudyToForward | None:
        """The upload's instances to forward, the upload marked as forwarding once accepted
        (`settle`); None when the upload was cancelled or rejected (the job is then cancelled
        too). Called again after each pass while the upload is still uploading: it must read
        the state as it is now."""
        ...

    def record_answers(
        self, connection: Connection, upload_id: uuid.UUID, results: Sequence[InstanceResult]
    ) -> None:
        """One STOW-RS batch's answers, per instance (synchronous: on SQLite the whole fenced
        transaction is one thread call, see forwarding.repository.BatchRecorder)."""
        ...

    async def counts(self, session: AsyncSession, upload_id: uuid.UUID) -> ForwardCounts: ...

    async def confirm_listed(
        self,
        session: AsyncSession,
        upload_id: uuid.UUID,
        *,
        sop_uids: Mapping[int, str | None],
        listed: set[str],
    ) -> int:
        """Mark the instances answered stored and listed by QIDO-RS confirmed; put those
        answered stored but not listed back to be sent again. Returns how many were not
        listed."""
        ...

    async def sent_instances(
        self, session: AsyncSession, upload_id: uuid.UUID
    ) -> list[SentInstance]:
        """The instances the PACS answered stored (sent or confirmed), by file index."""
        ...

    async def refuse(
        self, session: AsyncSession, upload_id: uuid.UUID, reasons: Mapping[int, str]
    ) -> None:
        """These instances (by file index) failed for good, for the reason given: the PACS
        holds other bytes under their UID."""
        ...

    async def finish(
        self, session: AsyncSession, upload_id: uuid.UUID, *, delivered: bool, at: dt.datetime
    ) -> SettledUpload | None:
        """Mark the upload delivered (at `at`) or failed; None when it was cancelled meanwhile
        (then nothing is settled)."""
        ...


@dataclass(frozen=True)
class Settlement:
    """A study delivered (the PACS lists every instance) or failed for good (it refused some)."""

    upload_id: uuid.UUID
    user_id: uuid.UUID
    study_instance_uid: str
    target: str
    delivered: bool
    confirmed: int
    failed: int
    instances: int
    stow_requests: int


# Run in the settling transaction, in the order given, before the forwarding's audit record.
SettleHook = Callable[[AsyncSession, Settlement], Awaitable[None]]
