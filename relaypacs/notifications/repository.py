"""Every query of the notification table."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ScalarResult, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.notifications.models import Notification, NotificationPreference


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
