"""HTTP endpoints of the notification domain: the user's notifications (list with the unread
count, mark read), and their live stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.types import Receive, Scope, Send

from relaypacs.auth.dependencies import ActorDep, CurrentUser, access_claims
from relaypacs.fields import Offset
from relaypacs.notifications import service
from relaypacs.notifications.dependencies import NoticeHubDep, StreamUser
from relaypacs.notifications.live import Subscription
from relaypacs.notifications.schemas import (
    NotificationList,
    NotificationRead,
    Preferences,
    PreferencesUpdate,
    ReadAll,
    StreamTicket,
)
from relaypacs.state import AppStateDep, ReadSessionDep, SessionDep

router = APIRouter(prefix="/notifications", tags=["notifications"])


@router.get("", response_model=NotificationList)
async def list_notifications(
    user: CurrentUser,
    session: ReadSessionDep,
    unread_only: Annotated[bool, Query()] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[Offset, Query()] = 0,
) -> NotificationList:
    """Newest first, with `unread`: how many of the user's notifications are unread."""
    return await service.list_notifications(
        session, user=user, unread_only=unread_only, limit=limit, offset=offset
    )


@router.get("/preferences", response_model=Preferences)
async def read_preferences(user: CurrentUser, session: ReadSessionDep) -> Preferences:
    return await service.email_preferences(session, user=user)


@router.put("/preferences", response_model=Preferences)
async def change_preferences(
    body: PreferencesUpdate, user: CurrentUser, actor: ActorDep, session: SessionDep
) -> Preferences:
    """Which kinds of notice are also emailed (report_ready, report_amended, upload_failed)."""
    return await service.set_email_preferences(session, user=user, actor=actor, body=body)


@router.post("/read-all", response_model=ReadAll)
async def mark_all_read(user: CurrentUser, session: SessionDep) -> ReadAll:
    return await service.mark_all_read(session, user=user)


@router.post("/{notification_id}/read", response_model=NotificationRead)
async def mark_read(
    notification_id: uuid.UUID, user: CurrentUser, session: SessionDep
) -> NotificationRead:
    return await service.mark_read(session, user=user, notification_id=notification_id)


@router.post("/stream-ticket", response_model=StreamTicket)
async def stream_ticket(request: Request, _user: CurrentUser, state: AppStateDep) -> StreamTicket:
    """A one-time ticket that opens the stream within 30 seconds (for a browser's
    EventSource, which cannot send the Authorization header)."""
    return await service.issue_stream_ticket(access=access_claims(request), key=state.signing_keys)


class EventStreamResponse(Response):
    """`text/event-stream` from an async iterator of text, in the request's own task: no task
    group per connection (Starlette's StreamingResponse keeps two tasks and a cancel scope for
    each of thousands of idle streams), one task that waits for the client's disconnection and
    closes the subscription, which ends the stream at once."""

    media_type = "text/event-stream"

    def __init__(
        self, body: AsyncIterator[str], subscription: Subscription, *, release: Callable[[], None]
    ) -> None:
        self.status_code = 200
        self.background = None
        self.body_iterator = body
        self.subscription = subscription
        self.release = release  # the subscription's end, even if the body never started
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.subscription.close()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send(
                    {"type": "http.response.body", "body": chunk.encode(), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await aclose_quietly(self.body_iterator)
            self.release()


async def aclose_quietly(body: AsyncIterator[str]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


@router.get(
    "/stream",
    status_code=200,
    response_class=EventStreamResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The events."}},
)
async def stream(
    user: StreamUser,
    state: AppStateDep,
    hub: NoticeHubDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> EventStreamResponse:
    """Server-Sent Events: each new notification of the user (`event: notification`, its id
    the notification's), heartbeat comments, replay after `Last-Event-ID`; the stream ends after
    RELAYPACS_SSE_MAX_SECONDS (the browser reconnects with Last-Event-ID)."""
    subscription = hub.open(user.id)  # before the replay is read: nothing falls between
    body = service.open_stream(
        state.db,
        hub,
        subscription,
        user=user,
        last_event_id=last_event_id,
        heartbeat=state.settings.sse_heartbeat_seconds,
        lifetime=state.settings.sse_max_seconds,
    )
    return EventStreamResponse(body, subscription, release=lambda: hub.release(subscription))
