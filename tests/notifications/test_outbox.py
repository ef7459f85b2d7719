"""The email outbox, with a real SMTP server (aiosmtpd) and real gateways (the app's lifespan, its
mail worker) on a database of their own: an email queued while SMTP is down, or claimed by a
worker that died, is sent once after a restart; two replicas send each email once; a temporary
refusal is retried; a permanent one, or too many, marks the row failed and audits it (no PHI)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.db import Database, utcnow
from relaypacs.main import create_app
from relaypacs.notifications import repository
from relaypacs.notifications.mail import Mailer, SmtpSettings
from relaypacs.notifications.models import EmailOutbox, Notification, OutboxStatus
from relaypacs.notifications.service import notify
from relaypacs.ops.service import scrape_metrics
from relaypacs.state import app_state
from tests.api.conftest import PASSWORD
from tests.api.uploading import make_study
from tests.conftest import unique_name
from tests.forwarding.test_orthanc import GatewayProcess
from tests.gateway import create_user as create_gateway_user
from tests.reports.conftest import Mailbox, smtp
from tests.scheduler.conftest import fresh_database_url, new_postgres_database
from tests.servers import free_port

__all__ = ["fresh_database_url", "smtp"]

Gateway = Callable[..., AbstractAsyncContextManager[FastAPI]]


@pytest.fixture
def gateway(fresh_database_url: str, tmp_path: Path) -> Gateway:
    """A gateway (create_app and its lifespan) on the test's own database, its SMTP server on
    `smtp_port` (a port nothing listens on: SMTP down)."""

    @contextlib.asynccontextmanager
    async def _run(smtp_port: int, **overrides: Any) -> AsyncIterator[FastAPI]:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": fresh_database_url,
            "secret_key": "test-signing-key-" + "x" * 32,
            "totp_required_roles": [],
            "public_url": "https://gateway.example",
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "smtp_security": "none",
            "smtp_timeout_seconds": 0.5,
            "smtp_retry_delays": [0.1, 0.2],
            "smtp_poll_seconds": 0.2,
            "scheduler": False,
        }
        settings = Settings(**(values | overrides))
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            yield application

    return _run


async def _user(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[uuid.UUID, str]:
    username = unique_name("mailed")
    address = f"{username}@hospital.example"
    async with sessionmaker() as session, session.begin():
        user = await create_user(
            session, username=username, password=PASSWORD, role=Role.CLINICIAN, email=address
        )
        return user.id, address


async def _notify(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: uuid.UUID, kind: str = "report_ready"
) -> uuid.UUID:
    """A notice, as the domains write one (service.notify, in a session of the app)."""
    async with sessionmaker() as session, session.begin():
        notify(session, user_id=user_id, kind=kind, related_id=uuid.uuid4())
    async with sessionmaker() as session:
        notification_id = await session.scalar(
            select(Notification.id)
            .where(Notification.user_id == user_id)
            .order_by(Notification.created_at.desc())
        )
    assert notification_id is not None
    return notification_id


async def _row(sessionmaker: async_sessionmaker[AsyncSession], notification_id: uuid.UUID) -> Any:
    async with sessionmaker() as session:
        row = await session.scalar(
            select(EmailOutbox).where(EmailOutbox.notification_id == notification_id)
        )
        assert row is not None
        return row


def _emails(outcome: str) -> float:
    """The relaypacs_emails_total counter of this process."""
    return REGISTRY.get_sample_value("relaypacs_emails_total", {"outcome": outcome}) or 0.0


async def _oldest_waiting(db: Database) -> float:
    """The gauge as a scrape of /metrics sets it."""
    await scrape_metrics(db=db, within=5.0, breakers={}, sse_streams=0)
    value = REGISTRY.get_sample_value("relaypacs_email_outbox_oldest_pending_age_seconds")
    assert value is not None
    return value


async def _until(condition: Callable[[], Any], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():
            await asyncio.sleep(0.05)


class TestDurable:
    async def test_an_email_queued_while_smtp_is_down_is_sent_once_after_a_restart(
        self, gateway: Gateway, smtp: tuple[Mailbox, int]
    ) -> None:
        mailbox, port = smtp
        async with gateway(free_port()) as first:  # SMTP down
            sessions = app_state(first).db.sessionmaker
            user_id, address = await _user(sessions)
            notification_id = await _notify(sessions, user_id)

            async def tried() -> bool:
                return (await _row(sessions, notification_id)).last_error is not None

            await _until(tried)  # the worker tried and failed: the email waits in the outbox
        row = await _row(sessions, notification_id)
        assert row.status == OutboxStatus.PENDING
        assert row.last_error is not None
        assert address not in row.last_error
        assert mailbox.to(address) == []

        async with gateway(port) as second:  # restarted, SMTP up
            sessions = app_state(second).db.sessionmaker

            async def sent() -> bool:
                return bool((await _row(sessions, notification_id)).status == OutboxStatus.SENT)

            await _until(sent)
            await asyncio.sleep(0.6)  # a few more looks at the outbox: nothing sent again
            (message,) = mailbox.to(address)
            assert message["Subject"] == "RelayPACS: a report is ready"

    async def test_the_age_of_the_oldest_email_waiting_is_exported_until_it_is_sent(
        self, gateway: Gateway, smtp: tuple[Mailbox, int]
    ) -> None:
        """relaypacs_email_outbox_oldest_pending_age_seconds (alert RelayPACSEmailOutboxBackingUp):
        an email queued 40 minutes ago and still waiting (SMTP down) is 40 minutes old at the
        next scrape; once it is sent, nothing waits (0)."""
        mailbox, port = smtp
        async with gateway(free_port(), smtp_max_attempts=1000) as down:  # SMTP down
            db = app_state(down).db
            user_id, address = await _user(db.sessionmaker)
            notification_id = await _notify(db.sessionmaker, user_id)
            async with db.sessionmaker() as session, session.begin():
                await session.execute(
                    update(EmailOutbox)
                    .where(EmailOutbox.notification_id == notification_id)
                    .values(created_at=utcnow() - dt.timedelta(minutes=40))
                )
            age = await _oldest_waiting(db)
            assert 40 * 60 <= age < 41 * 60
        async with gateway(port) as up:  # SMTP up: sent
            db = app_state(up).db

            async def sent() -> bool:
                row = await _row(db.sessionmaker, notification_id)
                return bool(row.status == OutboxStatus.SENT)

            await _until(sent)
            assert len(mailbox.to(address)) == 1
            assert await _oldest_waiting(db) == 0

    async def test_an_email_claimed_by_a_worker_that_died_is_sent_when_its_lease_runs_out(
        self, gateway: Gateway, smtp: tuple[Mailbox, int]
    ) -> None:
        mailbox, port = smtp
        async with gateway(port, smtp_poll_seconds=30) as app:
            sessions = app_state(app).db.sessionmaker
            user_id, address = await _user(sessions)
            # A replica claims it first and dies before sending: its lease holds the row. The
            # notice is written in a session of this app, but the claim is taken at once.
            dead = "dead-replica:claim"
            async with sessions() as session, session.begin():
                notify(session, user_id=user_id, kind="upload_failed", related_id=uuid.uuid4())
                await session.flush()
                claimed = await repository.claim_outbox(
                    session, token=dead, now=utcnow(), lease=dt.timedelta(seconds=2)
                )
                assert claimed is not None
                assert claimed.user_id == user_id
                notification_id = claimed.notification_id

            async def sent() -> bool:
                return bool((await _row(sessions, notification_id)).status == OutboxStatus.SENT)

            await _until(sent)
            row = await _row(sessions, notification_id)
            assert row.attempts == 2  # the dead claim's and this one
            (message,) = mailbox.to(address)
            assert message["Subject"] == "RelayPACS: a study could not be delivered"


class TestRetries:
    async def test_a_refusal_is_retried_then_sent_once(
        self, gateway: Gateway, smtp: tuple[Mailbox, int]
    ) -> None:
        mailbox, port = smtp
        async with gateway(port) as app:
            sessions = app_state(app).db.sessionmaker
            user_id, address = await _user(sessions)
            with mailbox.lock:
                mailbox.refuse_next, refused = 2, mailbox.refused
            retried, sent_before = _emails("retried"), _emails("sent")
            notification_id = await _notify(sessions, user_id)

            async def sent() -> bool:
                return bool((await _row(sessions, notification_id)).status == OutboxStatus.SENT)

            await _until(sent)
            row = await _row(sessions, notification_id)
            assert mailbox.refused == refused + 2
            assert row.attempts == 3
            assert len(mailbox.to(address)) == 1
            assert (_emails("retried") - retried, _emails("sent") - sent_before) == (2, 1)

    async def test_after_the_last_attempt_the_email_is_failed_and_audited_without_phi(
        self, gateway: Gateway, smtp: tuple[Mailbox, int]
    ) -> None:
        mailbox, port = smtp
        failed_before = _emails("failed")
        async with gateway(port, smtp_max_attempts=3) as app:
            sessions = app_state(app).db.sessionmaker
            user_id, address = await _user(sessions)
            with mailbox.lock:
                mailbox.refuse_next = 3
            notification_id = await _notify(sessions, user_id)

            async def failed() -> bool:
                row = await _row(sessions, notification_id)
                return bool(row.status == OutboxStatus.FAILED)

            await _until(failed)
            row = await _row(sessions, notification_id)
            assert row.attempts == 3
            assert row.finished_at is not None
            async with sessions() as session:
                (event,) = (
                    await session.scalars(
                        select(AuditEvent).where(
                            AuditEvent.action == "notification.email_failed",
                            AuditEvent.object_id == str(notification_id),
                        )
                    )
                ).all()
            assert event.outcome == "failure"
            assert event.details["attempts"] == 3
            assert address not in str(event.details)
            await asyncio.sleep(0.5)
            assert mailbox.to(address) == []  # given up: not tried a fourth time
            # counted (alert RelayPACSEmailsFailed)
            assert _emails("failed") - failed_before == 1

    async def test_a_kind_turned_off_after_it_was_queued_is_skipped(
        self, gateway: Gateway, smtp: tuple[Mailbox, int]
    ) -> None:
        mailbox, _ = smtp
        async with gateway(free_port()) as app:  # SMTP down: the row waits
            sessions = app_state(app).db.sessionmaker
            user_id, address = await _user(sessions)
            notification_id = await _notify(sessions, user_id, kind="upload_expired")
            async with sessions() as session, session.begin():
                await repository.set_email_choice(session, user_id, "upload_expired", email=False)

        async with gateway(smtp[1]) as app:
            sessions = app_state(app).db.sessionmaker

            async def skipped() -> bool:
                row = await _row(sessions, notification_id)
                return bool(row.status == OutboxStatus.SKIPPED)

            await _until(skipped)
        assert mailbox.to(address) == []

    async def test_a_notice_not_emailed_writes_no_outbox_row(
        self, gateway: Gateway, smtp: tuple[Mailbox, int]
    ) -> None:
        async with gateway(smtp[1]) as app:
            sessions = app_state(app).db.sessionmaker
            user_id, _ = await _user(sessions)
            notification_id = await _notify(sessions, user_id, kind="upload_delivered")
            async with sessions() as session:
                rows = await session.scalars(
                    select(EmailOutbox).where(EmailOutbox.notification_id == notification_id)
                )
                assert rows.all() == []


async def test_two_replicas_send_each_email_once(smtp: tuple[Mailbox, int]) -> None:
    """Two mail workers, each with its own engine and pool, on one PostgreSQL database: forty
    emails queued at once, each received exactly once."""
    mailbox, port = smtp
    settings = SmtpSettings(
        host="127.0.0.1",
        port=port,
        sender="relaypacs@gateway.example",
        security="none",
        timeout=5.0,
        retry_delays=(0.1,),
        poll_seconds=0.1,
    )
    with new_postgres_database() as url:
        first, second = Database.open(url), Database.open(url)
        mailers = [Mailer(settings, db.sessionmaker) for db in (first, second)]
        for mailer, db in zip(mailers, (first, second), strict=True):
            mailer.attach(db.sessionmaker)
        try:
            users = [await _user(first.sessionmaker) for _ in range(4)]
            async with first.sessionmaker() as session, session.begin():
                for i in range(40):
                    user_id, _ = users[i % 4]
                    notify(session, user_id=user_id, kind="report_ready", related_id=uuid.uuid4())
            for mailer in mailers:
                await mailer.start()

            async def all_sent() -> bool:
                async with first.sessionmaker() as session:
                    counts = await repository.outbox_counts(session)
                return counts == {OutboxStatus.SENT: 40}

            await _until(all_sent, within=60)
            await asyncio.sleep(0.5)
            for _, address in users:
                assert len(mailbox.to(address)) == 10
            assert mailers[0].sent + mailers[1].sent == 40
        finally:
            for mailer in mailers:
                await mailer.stop()
            await asyncio.gather(first.close(), second.close())


async def test_a_gateway_process_killed_before_sending_loses_no_email(
    tmp_path: Path, smtp: tuple[Mailbox, int]
) -> None:
    """Real `relaypacs serve` processes on one SQLite database: the scheduler of the first
    expires an abandoned upload (its uploader is notified, the email queued) while SMTP is down;
    the process is killed (SIGKILL); the next one, with SMTP up, sends the email, once."""
    mailbox, port = smtp
    data = tmp_path / "data"
    username = unique_name("expired")
    address = f"{username}@hospital.example"
    settings = {
        "RELAYPACS_SECRET_KEY": "outbox-kill-test-key-" + "k" * 32,
        "RELAYPACS_TOTP_REQUIRED_ROLES": "[]",
        "RELAYPACS_SMTP_HOST": "127.0.0.1",
        "RELAYPACS_SMTP_SECURITY": "none",
        "RELAYPACS_SMTP_TIMEOUT_SECONDS": "1",
        "RELAYPACS_SMTP_RETRY_DELAYS": "[0.2]",
        "RELAYPACS_SMTP_POLL_SECONDS": "0.2",
        # An upload with no chunk for a second expires; the check runs every 1.2 s.
        "RELAYPACS_UPLOAD_EXPIRE_HOURS": str(1 / 3600),
        "RELAYPACS_UPLOAD_EXPIRY_CHECK_MINUTES": "0.02",
    }
    first = GatewayProcess(
        data, {**settings, "RELAYPACS_SMTP_PORT": str(free_port())}, tmp_path / "first.log"
    )
    second = GatewayProcess(
        data, {**settings, "RELAYPACS_SMTP_PORT": str(port)}, tmp_path / "second.log"
    )
    db = Database.open(f"sqlite+aiosqlite:///{data / 'relaypacs.db'}")
    try:
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(
            create_gateway_user, data, username, PASSWORD, env=first.env, email=address
        )
        async with httpx.AsyncClient(base_url=first.base, timeout=30) as http:
            login = await http.post(
                "/auth/login", json={"username": username, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            started = await http.post(
                "/uploads",
                json=make_study(1).manifest(),
                headers={"Authorization": f"Bearer {token}"},
            )
            assert started.status_code == 201, started.text

        async def queued_and_tried() -> bool:
            async with db.sessionmaker() as session:
                rows = (await session.scalars(select(EmailOutbox))).all()
            return any(r.kind == "upload_expired" and r.last_error for r in rows)

        await _until(queued_and_tried, within=60)
        await asyncio.to_thread(first.kill)
        assert mailbox.to(address) == []

        await asyncio.to_thread(second.start)

        async def sent() -> bool:
            async with db.sessionmaker() as session:
                rows = (await session.scalars(select(EmailOutbox))).all()
            return [r.status for r in rows] == [OutboxStatus.SENT]

        await _until(sent, within=60)
        await asyncio.sleep(1.0)  # a few more looks at the outbox: nothing sent again
        (message,) = mailbox.to(address)
        assert message["Subject"] == "RelayPACS: an unfinished upload expired"
    finally:
        await asyncio.to_thread(first.stop)
        await asyncio.to_thread(second.stop)
        await db.close()
