"""The sweep job (relaypacs.jobs): ended sessions with their refresh tokens, revocations past
an access token's life and old read notifications are deleted; a live session, a recent
revocation and unread or recent notifications stay. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select, update

from relaypacs.auth.models import AuthSession, RefreshToken, Role
from relaypacs.config import Settings
from relaypacs.db import utcnow
from relaypacs.jobs import sweep
from relaypacs.notifications.models import Notification
from relaypacs.notifications.service import notify
from relaypacs.state import app_state
from tests.api.conftest import PASSWORD, MakeAccount
from tests.api.uploading import API

DAY = dt.timedelta(days=1)


async def login(client: httpx.AsyncClient, username: str) -> str:
    response = await client.post(
        f"{API}/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def test_ended_sessions_old_revocations_and_old_read_notices_go_the_rest_stays(
    app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    account = await make_account(Role.CLINICIAN)
    for _ in range(4):  # four more sessions of the same user: five in all
        await login(client, account.username)
    db = app_state(app).db
    async with db.sessionmaker() as session, session.begin():
        user_id = await session.scalar(
            select(AuthSession.user_id).order_by(AuthSession.created_at.desc()).limit(1)
        )
        assert user_id is not None
        ids = list(
            await session.scalars(
                select(AuthSession.id)
                .where(AuthSession.user_id == user_id)
                .order_by(AuthSession.created_at)
            )
        )
        assert len(ids) == 5
        past_end, idle, old_revoked, new_revoked, live = ids
        now = utcnow()
        changes: dict[uuid.UUID, dict[str, object]] = {
            past_end: {"expires_at": now - DAY},
            idle: {"last_used_at": now - 30 * DAY},
            old_revoked: {"revoked_at": now - DAY, "revoked_reason": "logout"},
            new_revoked: {"revoked_at": now, "revoked_reason": "logout"},
        }
        for session_id, values in changes.items():
            await session.execute(
                update(AuthSession).where(AuthSession.id == session_id).values(**values)
            )
        notices = {}
        for name, read, age in (
            ("old_read", True, 40 * DAY),
            ("old_unread", False, 40 * DAY),
            ("new_read", True, DAY),
        ):
            notify(session, user_id=user_id, kind="upload_received", payload={"name": name})
            await session.flush()
            notice = await session.scalar(
                select(Notification)
                .where(Notification.user_id == user_id)
                .order_by(Notification.created_at.desc())
                .limit(1)
            )
            assert notice is not None
            notice.is_read, notice.created_at = read, now - age
            notices[name] = notice.id

    await sweep(db, Settings(refresh_idle_minutes=7 * 24 * 60, read_notification_days=30))

    async with db.sessionmaker() as session, session.begin():
        left = set(
            await session.scalars(select(AuthSession.id).where(AuthSession.user_id == user_id))
        )
        assert left == {new_revoked, live}
        tokens = await session.scalar(
            select(func.count()).where(RefreshToken.session_id.in_(ids[:3]))
        )
        assert tokens == 0
        kept = set(
            await session.scalars(
                select(Notification.id).where(Notification.id.in_(list(notices.values())))
            )
        )
        assert kept == {notices["old_unread"], notices["new_read"]}
    # The live session still works.
    token = await login(client, account.username)
    me = await client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert uuid.UUID(str(me.json()["id"])) == user_id
