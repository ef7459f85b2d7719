"""Email for the notices that matter away from the screen (a report ready or amended, a study
that could not be delivered, was refused, or expired unfinished), off unless SMTP is configured.

Durable: where SMTP is configured, `service.notify` writes an `email_outbox` row in the
transaction of the notification itself (the mailer marks the app's sessions: `Mailer.attach`),
so a process that stops or is killed loses no email. The mail worker of every replica claims
due rows one at a time with a lease (FOR UPDATE SKIP LOCKED on PostgreSQL, a compare-and-set
UPDATE on both), sends, and marks the row sent once the SMTP server accepted the message
(fenced by the claim: a worker whose lease ran out records nothing). A temporary failure is
tried again after RELAYPACS_SMTP_RETRY_DELAYS (the last delay repeated) up to
RELAYPACS_SMTP_MAX_ATTEMPTS attempts; a permanent refusal (5xx) or the last attempt failing
marks the row failed, logged and audited with ids and the error's type only. Exactly once in
the normal case; at least once if a process dies between the server's acceptance and the mark
(the lease runs out and another worker sends it again): email has no idempotency key.

Why our own outbox rather than a task queue library: the row must be written in the
notification's transaction (on SQLite too, with no broker), which is what an outbox is; the
claim/lease pattern is the one of the forwarder and the scheduler.

A message carries no patient data: not in the subject, not in the body; only what happened and
a link to the gateway, where the reader signs in to see the study."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import logging
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.auth import repository as users
from relaypacs.db import utcnow
from relaypacs.notifications import repository
from relaypacs.notifications.live import LiveNotice
from relaypacs.notifications.models import EmailOutbox, OutboxStatus
from relaypacs.telemetry.metrics import EMAIL_OUTCOMES

logger = logging.getLogger("relaypacs.mail")


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    security: str = "starttls"  # starttls, tls or none
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0)  # the last one repeated
    max_attempts: int = 8
    poll_seconds: float = 5.0  # at most this long between two looks at the outbox
    public_url: str | None = None  # the gateway's address, for links


# Set in the `info` of the sessions whose notices are emailed (Mailer.attach).
OUTBOX = "relaypacs.mail.outbox"


def queue_email(
    session: AsyncSession,
    *,
    notification_id: uuid.UUID,
    user_id: uuid.UUID,
    kind: str,
    related_id: uuid.UUID | None,
) -> None:
    """The outbox row of a notice worth an email, in the session's transaction (if the
    session's app sends email, and the kind is one that is emailed)."""
    if kind not in TEMPLATES or not session.info.get(OUTBOX):
        return
    repository.add_outbox(
        session,
        EmailOutbox(
            id=uuid.uuid4(),
            notification_id=notification_id,
            user_id=user_id,
            kind=kind,
            related_id=related_id,
            status=OutboxStatus.PENDING,
            attempts=0,
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        ),
    )


@dataclass(frozen=True)
class Template:
    subject: str
    text: str  # what happened, one sentence
    path: str  # the web app's page, "{related_id}" replaced


# Subjects say what happened, never to whom.
TEMPLATES = {
    "report_ready": Template(
        "RelayPACS: a report is ready",
        "A report is ready for a study you uploaded.",
        "/reports/{related_id}",
    ),
    "report_amended": Template(
        "RelayPACS: a report was amended",
        "A report on a study you uploaded was amended.",
        "/reports/{related_id}",
    ),
    "upload_failed": Template(
        "RelayPACS: a study could not be delivered",
        "A study you uploaded could not be delivered to the PACS.",
        "/uploads/{related_id}",
    ),
    "upload_rejected": Template(
        "RelayPACS: a study was refused",
        "A study you uploaded was refused: none of its files could be accepted.",
        "/uploads/{related_id}",
    ),
    "upload_expired": Template(
        "RelayPACS: an unfinished upload expired",
        "An upload you started was not finished in time and has expired; send the study again.",
        "/uploads/{related_id}",
    ),
}


def compose(
    template: Template, *, to: str, sender: str, related_id: uuid.UUID | None, base: str | None
) -> EmailMessage:
    """The message, plain text and HTML: what happened and a link, nothing of the patient."""
    link = None
    if base and related_id is not None:
        link = base.rstrip("/") + template.path.replace("{related_id}", str(related_id))
    message = EmailMessage()
    message["Subject"] = template.subject
    message["From"] = sender
    message["To"] = to
    where = f"Open it: {link}" if link else "Sign in to RelayPACS to see it."
    message.set_content(
        f"{template.text}\n\n{where}\n\n"
        "For the patient's privacy this message holds no patient details.\n"
    )
    anchor = (
        f'<p><a href="{html.escape(link, quote=True)}">Open it in RelayPACS</a></p>'
        if link
        else "<p>Sign in to RelayPACS to see it.</p>"
    )
    message.add_alternative(
        f"<html><body><p>{html.escape(template.text)}</p>{anchor}"
        "<p><small>For the patient's privacy this message holds no patient details."
        "</small></p></body></html>",
        subtype="html",
    )
    return message


class Permanent(Exception):
    """The SMTP server refused the message for good (a 5xx answer): not tried again."""


@dataclass(eq=False)
class Mailer:
    """The mail worker of this process: sends the outbox's due rows (module docstring)."""

    settings: SmtpSettings
    sessionmaker: async_sessionmaker[AsyncSession]
    owner: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    failed: int = 0

    @property
    def lease(self) -> dt.timedelta:
        """A claim's hold on its row: well past what one send may take (a connection, the
        greeting, STARTTLS, login, the envelope and the data, each within the timeout)."""
        return dt.timedelta(seconds=self.settings.timeout * 8)

    def attach(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Sessions of this sessionmaker write the outbox rows of their notices."""
        info = dict(sessionmaker.kw.get("info") or {})
        info[OUTBOX] = True
        sessionmaker.configure(info=info)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def committed(self, notices: list[LiveNotice]) -> None:
        """The hub's callback: a committed notice worth an email wakes the worker (the other
        replicas find it at their next look)."""
        if any(n.kind in TEMPLATES for n in notices):
            self._wake.set()

    async def _run(self) -> None:
        while True:
            # Cleared before looking, never after: a notice committed while the worker looks
            # must not wait for the next poll.
            self._wake.clear()
            try:
                if await self.send_one():
                    continue
                pause = await self._until_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: look again later
                logger.warning("mail worker: %s, trying again", type(exc).__name__)
                pause = self.settings.poll_seconds
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _until_due(self) -> float:
        async with self.sessionmaker() as session, session.begin():
            due = await repository.next_outbox_due(session)
        poll = self.settings.poll_seconds
        if due is None:
            return poll
        return min(poll, max(0.0, (due - utcnow()).total_seconds()))

    async def send_one(self) -> bool:
        """Claim the email due first and send it; False if none is due."""
        token = f"{self.owner}:{uuid.uuid4().hex[:16]}"
        async with self.sessionmaker() as session, session.begin():
            row = await repository.claim_outbox(
                session, token=token, now=utcnow(), lease=self.lease
            )
            if row is None:
                return False
            message = await self._message(session, row)
            row_id, kind, attempts = row.id, row.kind, row.attempts
            notification_id = row.notification_id
        if message is None:
            await self._settle(row_id, token, status=OutboxStatus.SKIPPED, outcome="skipped")
            return True
        try:
            await self._deliver(message)
        except asyncio.CancelledError:
            raise  # stopping: the lease runs out and a worker sends it then
        except Exception as exc:  # SMTP's, the network's, or anything else: counted, capped
            await self._failed(row_id, token, kind, notification_id, attempts, exc)
            return True
        if await self._settle(row_id, token, status=OutboxStatus.SENT, outcome="sent"):
            self.sent += 1
        return True

    async def _message(self, session: AsyncSession, row: EmailOutbox) -> EmailMessage | None:
        """The message for the row's user, now (None: no address, inactive, or this kind
        turned off since)."""
        choices = await repository.email_choices(session, [row.user_id])
        if not choices.get((row.user_id, row.kind), True):
            return None
        user = await users.get_user(session, row.user_id)
        if user is None or not user.is_active or not user.email:
            return None
        return compose(
            TEMPLATES[row.kind],
            to=user.email,
            sender=self.settings.sender,
            related_id=row.related_id,
            base=self.settings.public_url,
        )

    async def _deliver(self, message: EmailMessage) -> None:
        s = self.settings
        try:
            await aiosmtplib.send(
                message,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                timeout=s.timeout,
            )
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise Permanent(type(exc).__name__) from exc
            raise

    async def _failed(
        self,
        row_id: uuid.UUID,
        token: str,
        kind: str,
        notification_id: uuid.UUID,
        attempts: int,
        exc: BaseException,
    ) -> None:
        # The exception's type only: its text may quote the recipient.
        error = str(exc) if isinstance(exc, Permanent) else type(exc).__name__
        s = self.settings
        if isinstance(exc, Permanent) or attempts >= s.max_attempts:
            if await self._settle(
                row_id,
                token,
                status=OutboxStatus.FAILED,
                outcome="failed",
                last_error=error,
                audit=(kind, notification_id, attempts),
            ):
                self.failed += 1
                logger.warning(
                    "email %s (%s) not sent after %d attempt(s) (%s): given up",
                    row_id,
                    kind,
                    attempts,
                    error,
                )
            return
        delays = s.retry_delays or (60.0,)
        delay = delays[min(attempts, len(delays)) - 1]
        logger.info("email %s attempt %d failed (%s): retrying", row_id, attempts, error)
        await self._settle(
            row_id,
            token,
            status=OutboxStatus.PENDING,
            outcome="retried",
            last_error=error,
            next_attempt_at=utcnow() + dt.timedelta(seconds=delay),
        )

    async def _settle(
        self,
        row_id: uuid.UUID,
        token: str,
        *,
        status: str,
        outcome: str,
        last_error: str | None = None,
        next_attempt_at: dt.datetime | None = None,
        audit: tuple[str, uuid.UUID, int] | None = None,
    ) -> bool:
        """Record the outcome, fenced by the claim; False if the lease was lost meanwhile."""
        values: dict[str, object] = {"status": status, "last_error": last_error}
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        if status != OutboxStatus.PENDING:
            values["finished_at"] = utcnow()
        async with self.sessionmaker() as session, session.begin():
            settled = await repository.settle_outbox(session, row_id, token=token, **values)
            if settled and audit is not None:
                kind, notification_id, attempts = audit
                await record_event(
                    session,
                    actor=SYSTEM,
                    action="notification.email_failed",
                    outcome="failure",
                    object_type="notification",
                    object_id=notification_id,
                    details={"kind": kind, "attempts": attempts, "error": last_error},
                )
        if settled:
            EMAIL_OUTCOMES[outcome].inc()
        else:
            logger.warning("email %s: the lease ran out before its outcome was recorded", row_id)
        return settled
