"""Real gateway processes for the stream tests: accounts, a delivered study's report (opened as
the forwarder's settle hook opens it, here without a PACS), and an SSE reader."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from relaypacs.db import Database
from relaypacs.reports import repository
from relaypacs.reports.service import open_report
from tests.api.uploading import make_study
from tests.security.live import CHUNK_SIZE, LiveAccount

API = "/api/v1"


def upload_study(base: str, account: LiveAccount) -> str:
    """A one-instance study uploaded and completed; its upload id."""
    study = make_study(1)
    with httpx.Client(base_url=base, headers=account.headers, timeout=60) as http:
        upload = http.post(f"{API}/uploads", json=study.manifest())
        assert upload.status_code == 201, upload.text
        upload_id: str = upload.json()["id"]
        for index, data in enumerate(study.files):
            for c in range(-(-len(data) // CHUNK_SIZE)):
                chunk = data[c * CHUNK_SIZE : (c + 1) * CHUNK_SIZE]
                md5 = base64.b64encode(hashlib.md5(chunk).digest()).decode()
                put = http.put(
                    f"{API}/uploads/{upload_id}/files/{index}/chunks/{c}",
                    content=chunk,
                    headers={"Content-MD5": md5},
                )
                assert put.status_code == 200, put.text
        done = http.post(f"{API}/uploads/{upload_id}/complete")
        assert done.status_code in (200, 202), done.text
    return upload_id


async def open_report_of(database_url: str, upload_id: str) -> str:
    """The delivered study's report, opened in the gateways' database; its id."""
    db = Database.open(database_url)
    try:
        async with db.sessionmaker() as session, session.begin():
            await open_report(session, upload_id=uuid.UUID(upload_id))
        async with db.read_sessionmaker() as session, session.begin():
            report = await repository.report_of_upload(session, uuid.UUID(upload_id))
            assert report is not None
            return str(report.id)
    finally:
        await db.close()


@dataclass
class EventReader:
    """An SSE client's view: every event (id, type, data) and comment it read, in order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    body: str = ""  # a refusal's
    ready: bool = False  # the server subscribed and replayed (its `retry:` line came)
    ended: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]

    async def wait_for(self, count: int, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def read_stream(
    client: httpx.AsyncClient, url: str, reader: EventReader, headers: dict[str, str]
) -> None:
    async with client.stream("GET", url, headers=headers) as response:
        reader.status = response.status_code
        if response.status_code != 200:
            reader.body = (await response.aread()).decode()
            reader.ended = True
            reader.arrived.set()
            return
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith("retry:"):
                reader.ready = True
            elif line.startswith(":"):
                reader.comments.append(line[1:].strip())
            elif line.startswith("id: "):
                event["id"] = line[4:]
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and event:
                reader.events.append(event)
                event = {}
                reader.arrived.set()
    reader.ended = True
    reader.arrived.set()


@contextlib.asynccontextmanager
async def streaming(
    base: str, *, headers: dict[str, str], query: str = ""
) -> AsyncIterator[EventReader]:
    """A stream open in the background for the block; its reader."""
    reader = EventReader()
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30, read=60)) as client:
        task = asyncio.create_task(
            read_stream(client, f"{API}/notifications/stream{query}", reader, headers)
        )
        try:
            # Wait until the server answered (and subscribed) before anything is raised.
            async with asyncio.timeout(15):
                while not reader.ready and not reader.ended:
                    await asyncio.sleep(0.02)
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task
