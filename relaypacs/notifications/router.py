"""HTTP endpoints of the notification domain: the user's notifications (list with the unread
count, mark read), and their live stream (Server-Sent Events)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from relaypacs.auth.dependencies import CurrentUser, access_claims
from relaypacs.fields import Offset
from relaypacs.notifications import service
from relaypacs.notifications.dependencies import NoticeHubDep, StreamUser
from relaypacs.notifications.schemas import (
    NotificationList,
    NotificationRead,
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
    return await service.issue_stream_ticket(access=access_claims(request), key=state.signing_key)


@router.get("/stream", response_class=StreamingResponse)
async def stream(
    user: StreamUser,
    state: AppStateDep,
    hub: NoticeHubDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Server-Sent Events: each new notification of the user (`event: notification`, its id
    the notification's), heartbeat comments, replay after `Last-Event-ID`; the stream ends after
    RELAYPACS_SSE_MAX_SECONDS (the browser reconnects with Last-Event-ID)."""
    body = service.open_stream(
        state.db,
        hub,
        user=user,
        last_event_id=last_event_id,
        heartbeat=state.settings.sse_heartbeat_seconds,
        lifetime=state.settings.sse_max_seconds,
    )
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
