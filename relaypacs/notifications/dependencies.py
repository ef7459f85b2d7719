"""The notification domain's dependencies: the hub of live notices, and the user of an event
stream (an access token in the header, or a one-time ticket: a browser's EventSource sends no
header)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from relaypacs.auth.dependencies import (
    bearer_scheme,
    get_current_user,
    get_session_user,
    get_ticket_user,
)
from relaypacs.auth.models import User
from relaypacs.errors import NotAuthenticated
from relaypacs.notifications.live import NoticeHub
from relaypacs.notifications.service import stream_ticket_lifetime
from relaypacs.state import AppStateDep, get_app_state


async def get_notice_hub(state: AppStateDep) -> NoticeHub:
    return state.notice_hub


NoticeHubDep = Annotated[NoticeHub, Depends(get_notice_hub)]


async def get_stream_user(
    request: Request,
    ticket: Annotated[
        str | None,
        Query(
            min_length=16,
            max_length=2048,
            pattern=r"^[A-Za-z0-9_.-]+$",
            description="A one-time ticket from POST /notifications/stream-ticket (for a "
            "browser's EventSource, which cannot send the Authorization header).",
        ),
    ] = None,
) -> User:
    """The stream's user: by the Authorization header, else by the ticket (used once)."""
    credentials = await bearer_scheme(request)
    if credentials is not None:
        return await get_current_user(request, await get_session_user(request, credentials))
    if ticket is None:
        raise NotAuthenticated("An access token or a stream ticket is required.")
    hub = get_app_state(request).notice_hub
    lifetime = stream_ticket_lifetime().total_seconds()

    async def claim_once(ticket_id: str) -> bool:
        return await hub.claim_ticket(ticket_id, lifetime)

    return await get_ticket_user(request, ticket, claim_once=claim_once)


StreamUser = Annotated[User, Depends(get_stream_user)]
