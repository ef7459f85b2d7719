"""Every query of the notification tables (notices, email choices, the email outbox)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, cast

from sqlalchemy import CursorResult, ScalarResult, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.notifications.models import (
    EmailOutbox,
    Notification,
    NotificationPreference,
    OutboxStatus,
)


def add_notification(session: AsyncSession, notification: Notification) -> None:
    session.add(notification)


async def page(
    session: AsyncSession, *, user_id: uuid.UUID, unread_only: bool, limit: int, offset: int
) -> tuple[list[Notification], int, int]:
    """A page of the user's notifications, newest first; how many match; how many are unread."""
    mine = Notification.user_id == user_id
    query = select(Notification).where(mine)
    if unread_only:
        query = query.where(Notification.is_read.is_(False))
    rows: ScalarResult[Notification] = await session.scalars(
        query.order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(limit)
        .offset(offset)
    )
    total = await session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(mine, *([Notification.is_read.is_(False)] if unread_only else []))
    )
    unread = await session.scalar(
        select(func.count()).select_from(Notification).where(mine, Notification.is_read.is_(False))
    )
    return list(rows), int(total or 0), int(unread or 0)


async def get_notification(
    session: AsyncSession, notification_id: uuid.UUID
) -> Notification | None:
    return await session.get(Notification, notification_id)


async def mark_all_read(session: AsyncSession, user_id: uuid.UUID) -> int:
    result = await session.execute(
        update(Notification)
        .where(Notification.user_id == user_id, Notification.is_read.is_(False))
        .values(is_read=True)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_read_before(session: AsyncSession, before: dt.datetime) -> int:
    result = await session.execute(
        delete(Notification).where(Notification.is_read.is_(True), Notification.created_at < before)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def after(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    created_at: dt.datetime,
    last_id: uuid.UUID,
    limit: int,
) -> list[Notification]:
    """The user's notifications after (created_at, id), oldest first: what a stream missed."""
    rows: ScalarResult[Notification] = await session.scalars(
        select(Notification)
        .where(
            Notification.user_id == user_id,
            or_(
                Notification.created_at > created_at,
                and_(Notification.created_at == created_at, Notification.id > last_id),
            ),
        )
        .order_by(Notification.created_at, Notification.id)
        .limit(limit)
    )
    return list(rows)


async def email_choices(
    session: AsyncSession, user_ids: list[uuid.UUID]
) -> dict[tuple[uuid.UUID, str], bool]:
    """The (user, kind) pairs with a stored choice, and whether they are emailed."""
    if not user_ids:
        return {}
    rows = await session.execute(
        select(
            NotificationPreference.user_id,
            NotificationPreference.kind,
            NotificationPreference.email,
        ).where(NotificationPreference.user_id.in_(user_ids))
    )
    return {(user_id, kind): bool(email) for user_id, kind, email in rows}


async def set_email_choice(
    session: AsyncSession, user_id: uuid.UUID, kind: str, *, email: bool
) -> None:
    row = await session.get(NotificationPreference, (user_id, kind))
    if row is None:
        session.add(NotificationPreference(user_id=user_id, kind=kind, email=email))
    else:
        row.email = email
    await session.flush()


# --- the email outbox ------------------------------------------------------------------------


def add_outbox(session: AsyncSession, row: EmailOutbox) -> None:
    session.add(row)


async def claim_outbox(
    session: AsyncSession, *, token: str, now: dt.datetime, lease: dt.timedelta
) -> EmailOutbox | None:
    """Take the lease of the email due first: FOR UPDATE SKIP LOCKED on PostgreSQL (another
    replica's worker skips the row rather than waits), then a compare-and-set UPDATE that only
    matches a row whose lease is free (what makes it atomic on SQLite, where FOR UPDATE is not
    rendered). `token` is unique to this claim: the later writes are fenced by it."""
    free = (EmailOutbox.lease_until.is_(None)) | (EmailOutbox.lease_until < now)
    due = (EmailOutbox.status == OutboxStatus.PENDING, EmailOutbox.next_attempt_at <= now, free)
    row_id = await session.scalar(
        select(EmailOutbox.id)
        .where(*due)
        .order_by(EmailOutbox.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if row_id is None:
        return None
    result = await session.execute(
        update(EmailOutbox)
        .where(EmailOutbox.id == row_id, *due)
        .values(lease_owner=token, lease_until=now + lease, attempts=EmailOutbox.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    if not cast(CursorResult[Any], result).rowcount:
        return None
    return await session.get(EmailOutbox, row_id, populate_existing=True)


async def settle_outbox(
    session: AsyncSession, row_id: uuid.UUID, *, token: str, **values: Any
) -> bool:
    """Record a claimed email's outcome and release its lease, if the lease is still this
    claim's (False: it ran out and another worker took the row over)."""
    result = await session.execute(
        update(EmailOutbox)
        .where(EmailOutbox.id == row_id, EmailOutbox.lease_owner == token)
        .values(lease_owner=None, lease_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


async def next_outbox_due(session: AsyncSession) -> dt.datetime | None:
    """When the next pending email is due (its retry time, or its lease's end)."""
    return await session.scalar(
        select(func.min(func.coalesce(EmailOutbox.lease_until, EmailOutbox.next_attempt_at))).where(
            EmailOutbox.status == OutboxStatus.PENDING
        )
    )


async def outbox_counts(session: AsyncSession) -> dict[str, int]:
    """How many outbox rows are in each status."""
    rows = await session.execute(
        select(EmailOutbox.status, func.count()).group_by(EmailOutbox.status)
    )
    return {status: int(count) for status, count in rows}


async def oldest_pending_since(session: AsyncSession) -> dt.datetime | None:
    """When the oldest email still to send was queued (None: none is)."""
    oldest: dt.datetime | None = await session.scalar(
        select(func.min(EmailOutbox.created_at)).where(EmailOutbox.status == OutboxStatus.PENDING)
    )
    return oldest


async def delete_outbox_finished_before(session: AsyncSession, before: dt.datetime) -> int:
    result = await session.execute(
        delete(EmailOutbox).where(
            EmailOutbox.status != OutboxStatus.PENDING, EmailOutbox.finished_at < before
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
