"""Email for the notices that matter away from the screen (a report ready or amended, a study
that could not be delivered, was refused, or expired unfinished): sent after the transaction
commits, by a background task (never in a request), retried, off unless SMTP is configured.

A message carries no patient data: not in the subject, not in the body; only what happened and
a link to the gateway, where the reader signs in to see the study."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.auth import repository as users
from relaypacs.notifications import repository
from relaypacs.notifications.live import LiveNotice

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
    retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0)
    public_url: str | None = None  # the gateway's address, for links


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


@dataclass(eq=False)
class Mailer:
    """A queue of messages and the task that sends them, with retries (in memory: a message not
    yet sent when the process stops is not sent; the notification itself is stored)."""

    settings: SmtpSettings
    read_sessionmaker: async_sessionmaker[AsyncSession]
    _queue: asyncio.Queue[EmailMessage] = field(default_factory=lambda: asyncio.Queue(10_000))
    _task: asyncio.Task[None] | None = None
    sent: int = 0
    failed: int = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def committed(self, notices: list[LiveNotice]) -> None:
        """The hub's callback: the committed notices worth an email, queued (never blocks)."""
        wanted = [n for n in notices if n.kind in TEMPLATES]
        if not wanted:
            return
        async with self.read_sessionmaker() as session, session.begin():
            choices = await repository.email_choices(session, [n.user_id for n in wanted])
            addresses = {}
            for notice in wanted:
                if not choices.get((notice.user_id, notice.kind), True):
                    continue  # the user turned this kind off
                user = await users.get_user(session, notice.user_id)
                if user is not None and user.is_active and user.email:
                    addresses[notice.id] = user.email
        for notice in wanted:
            to = addresses.get(notice.id)
            if to is None:
                continue
            message = compose(
                TEMPLATES[notice.kind],
                to=to,
                sender=self.settings.sender,
                related_id=notice.related_id,
                base=self.settings.public_url,
            )
            try:
                self._queue.put_nowait(message)
            except asyncio.QueueFull:
                self.failed += 1
                logger.warning("the email queue is full: a %s message is dropped", notice.kind)

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            await self._send(message)

    async def _send(self, message: EmailMessage) -> None:
        s = self.settings
        delays = (*s.retry_delays, None)
        for attempt, delay in enumerate(delays, start=1):
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
                self.sent += 1
                return
            except (aiosmtplib.SMTPException, OSError) as exc:
                # The exception's type only: its text may quote the recipient.
                if delay is None:
                    self.failed += 1
                    logger.warning(
                        "email not sent after %d attempts (%s)", attempt, type(exc).__name__
                    )
                    return
                logger.info("email attempt %d failed (%s): retrying", attempt, type(exc).__name__)
                await asyncio.sleep(delay)
