"""The report tests: the in-process gateway of tests/api, with the report settings on (a PACS
viewer URL template), on each database."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI

from relaypacs.config import Settings
from relaypacs.main import create_app
from tests.api.conftest import CHUNK_SIZE, client, clinician, make_account
from tests.servers import free_port

__all__ = ["app", "client", "clinician", "make_account", "smtp"]

VIEWER = "http://pacs.example/viewer?study={study_instance_uid}"


PUBLIC_URL = "https://gateway.example"


@dataclass
class Mailbox:
    """What a real SMTP server (aiosmtpd, in its own thread) received; it may refuse the next
    few messages with a temporary failure (451), as a busy server does."""

    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    refuse_next: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        with self.lock:
            if self.refuse_next > 0:
                self.refuse_next -= 1
                self.refused += 1
                return "451 Try again later"
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            self.messages.append(parsed)
            self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m, r in zip(self.messages, self.recipients, strict=True) if address in r]


@pytest.fixture(scope="session")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="session")
async def app(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, smtp: tuple[Mailbox, int]
) -> AsyncIterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("reports"),
        database_url=database_url,
        chunk_size=CHUNK_SIZE,
        dicom_workers=2,
        secret_key="test-signing-key-" + "x" * 32,
        totp_required_roles=[],
        rate_limit_login_ip="100000/minute",
        pacs_viewer_url=VIEWER,
        public_url=PUBLIC_URL,
        smtp_host="127.0.0.1",
        smtp_port=smtp[1],
        smtp_security="none",
        smtp_retry_delays=[0.2, 0.4],
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application
