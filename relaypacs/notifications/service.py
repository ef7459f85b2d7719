"""Notifying users: a notice is written in the transaction of what it tells of, pushed to the
user's open streams once that transaction commits (notifications.live), listed, marked read."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_event
from relaypacs.auth.models import User
from relaypacs.auth.security import AccessClaims, SigningKey, create_stream_ticket
from relaypacs.db import Database, utcnow
from relaypacs.notifications import repository
from relaypacs.notifications.errors import NotificationNotFound
from relaypacs.notifications.live import LiveNotice, NoticeHub, Subscription, events, stash
from relaypacs.notifications.mail import queue_email
from relaypacs.notifications.models import Notification
from relaypacs.notifications.schemas import (
    EMAIL_KINDS,
    NotificationList,
    NotificationRead,
    Preferences,
    PreferencesUpdate,
    ReadAll,
    StreamTicket,
)

REPLAY_LIMIT = 500  # at most this many missed notices are replayed on a reconnection


def notify(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    kind: str,
    related_id: uuid.UUID | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """A notice of `kind` (e.g. "upload_delivered") for the user, about `related_id`; written
    when the caller's transaction commits, and pushed to the user's streams then; its email,
    if it is a kind that is emailed, is queued in the same transaction (mail.queue_email).
    `payload` holds ids and counts, never patient data (it crosses Redis and reaches the
    browser)."""
    notification = Notification(
        id=uuid.uuid4(),
        user_id=user_id,
        type=kind,
        related_id=related_id,
        payload=payload or {},
        is_read=False,
        created_at=utcnow(),
    )
    repository.add_notification(session, notification)
    queue_email(
        session,
        notification_id=notification.id,
        user_id=user_id,
        kind=kind,
        related_id=related_id,
    )
    stash(session, _live(notification))


def _live(n: Notification) -> LiveNotice:
    return LiveNotice(
        id=n.id,
        user_id=n.user_id,
        kind=n.type,
        related_id=n.related_id,
        payload=n.payload,
        created_at=n.created_at,
    )


def _read(n: Notification) -> NotificationRead:
    return NotificationRead(
        id=n.id,
        kind=n.type,
        related_id=n.related_id,
        payload=n.payload,
        is_read=n.is_read,
        created_at=n.created_at,
    )


async def list_notifications(
    session: AsyncSession, *, user: User, unread_only: bool, limit: int, offset: int
) -> NotificationList:
    """The user's notifications, newest first, with how many are unread."""
    rows, total, unread = await repository.page(
        session, user_id=user.id, unread_only=unread_only, limit=limit, offset=offset
    )
    return NotificationList(items=[_read(n) for n in rows], total=total, unread=unread)


async def mark_read(
    session: AsyncSession, *, user: User, notification_id: uuid.UUID
) -> NotificationRead:
    """One of the user's notifications read (another user's: the same 404 as a missing one)."""
    notification = await repository.get_notification(session, notification_id)
    if notification is None:
        raise NotificationNotFound().denying("notification", notification_id, reason="missing")
    if notification.user_id != user.id:
        raise NotificationNotFound().denying("notification", notification_id)
    notification.is_read = True
    await session.flush()
    return _read(notification)


async def mark_all_read(session: AsyncSession, *, user: User) -> ReadAll:
    return ReadAll(marked=await repository.mark_all_read(session, user.id))


async def sweep_read(session: AsyncSession, *, older_than: dt.timedelta) -> int:
    """The scheduled sweep: delete read notifications older than `older_than`, and the outbox
    rows of emails sent (or given up) before then; how many notifications."""
    await repository.delete_outbox_finished_before(session, utcnow() - older_than)
    return await repository.delete_read_before(session, utcnow() - older_than)


async def email_outbox_counts(session: AsyncSession) -> dict[str, int]:
    """The email outbox's rows by status (pending, sent, failed, skipped), for the metrics."""
    return await repository.outbox_counts(session)


async def email_outbox_oldest_pending_age(session: AsyncSession) -> float:
    """Seconds since the oldest email still to send was queued (0 when none is), for the
    metrics: it grows when no worker sends (every attempt of an email spans minutes)."""
    oldest = await repository.oldest_pending_since(session)
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # SQLite's DateTime: stored as UTC
        oldest = oldest.replace(tzinfo=dt.UTC)
    return max((utcnow() - oldest).total_seconds(), 0.0)


def render_event(notice: LiveNotice) -> str:
    """One Server-Sent Event: its id is the notification's (Last-Event-ID on reconnection)."""
    data = NotificationRead(
        id=notice.id,
        kind=notice.kind,
        related_id=notice.related_id,
        payload=notice.payload,
        is_read=False,
        created_at=notice.created_at,
    ).model_dump(mode="json")
    return f"id: {notice.id}\nevent: notification\ndata: {json.dumps(data)}\n\n"


async def _missed(db: Database, user: User, last_event_id: str | None) -> list[LiveNotice]:
    """The user's notifications after the last one the client received (by Last-Event-ID):
    none if it names no notification of theirs."""
    if not last_event_id:
        return []
    try:
        last_id = uuid.UUID(last_event_id.strip())
    except ValueError:
        return []
    async with db.read_sessionmaker() as session, session.begin():
        last = await repository.get_notification(session, last_id)
        if last is None or last.user_id != user.id:
            return []
        rows = await repository.after(
            session,
            user_id=user.id,
            created_at=last.created_at,
            last_id=last.id,
            limit=REPLAY_LIMIT,
        )
    return [_live(n) for n in rows]


async def open_stream(
    db: Database,
    hub: NoticeHub,
    subscription: Subscription,
    *,
    user: User,
    last_event_id: str | None,
    heartbeat: float,
    lifetime: float,
) -> AsyncIterator[str]:
    """The user's event stream, on a subscription opened first (`hub.open`): what was missed,
    read from the database after the subscription (so nothing falls between the two; a notice
    in both is sent once), then live notices. The subscription is released at the end."""
    try:
        replay = await _missed(db, user, last_event_id)
        async for chunk in events(
            subscription, replay, heartbeat=heartbeat, lifetime=lifetime, render=render_event
        ):
            yield chunk
    finally:
        hub.release(subscription)


def stream_ticket_lifetime() -> dt.timedelta:
    return dt.timedelta(seconds=30)


async def issue_stream_ticket(*, access: AccessClaims, key: SigningKey) -> StreamTicket:
    """A one-time ticket for the stream (a browser's EventSource cannot send the access token;
    the token itself never goes in a URL)."""
    lifetime = stream_ticket_lifetime()
    ticket, _ = create_stream_ticket(access=access, key=key, lifetime=lifetime)
    return StreamTicket(ticket=ticket, expires_in=int(lifetime.total_seconds()))


async def email_preferences(session: AsyncSession, *, user: User) -> Preferences:
    choices = await repository.email_choices(session, [user.id])
    return Preferences(email={k: choices.get((user.id, k), True) for k in EMAIL_KINDS})


async def set_email_preferences(
    session: AsyncSession, *, user: User, actor: Actor, body: PreferencesUpdate
) -> Preferences:
    """Turn the email of some kinds of notice on or off (the notices themselves stay)."""
    for kind, email in body.email.items():
        await repository.set_email_choice(session, user.id, kind, email=email)
    await record_event(
        session,
        actor=actor,
        action="notification.preferences",
        object_type="user",
        object_id=user.id,
        details={"email": dict(body.email)},
    )
    return await email_preferences(session, user=user)
