"""Two `complete` calls of one upload at once (two CLIs on one study, or a client resending after
a timeout): both verify the files, only the one that moves the upload out of `received` writes
the verdicts; the other writes nothing. Before, the second set every file's forwarding state back
to pending under a relay already under way, and the receipt said "PACS confirmed 0/N"."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from relaypacs.audit.models import AuditEvent
from relaypacs.state import app_state
from relaypacs.uploads.models import ForwardStatus, UploadFile, UploadStatus
from relaypacs.uploads.verify import StudyVerifier
from tests.api.conftest import Account
from tests.api.uploading import complete, init, make_study, send_all


class TwoAtOnce:
    """A verifier that lets both calls finish verifying, then holds the second back until
    `second_may_go` is set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.arrived = 0
        self.both_here = asyncio.Event()
        self.first_done = asyncio.Event()
        self.second_may_go = asyncio.Event()

    async def verify(self, *args: Any, **kwargs: Any) -> Any:
        verdicts = await self.real.verify(*args, **kwargs)
        turn = self.arrived
        self.arrived += 1
        if self.arrived == 2:
            self.both_here.set()
        await self.both_here.wait()
        if turn == 1:
            await self.second_may_go.wait()
        return verdicts


async def forward_states(app: FastAPI, upload_id: str) -> list[ForwardStatus | None]:
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        rows = await session.scalars(
            select(UploadFile.forward_status)
            .where(UploadFile.upload_id == uuid.UUID(upload_id))
            .order_by(UploadFile.index)
        )
        return list(rows)


async def test_the_second_complete_changes_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    clinician: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = make_study(3)
    upload_id = (await init(client, clinician, study)).json()["id"]
    await send_all(client, clinician, upload_id, study)
    state = app_state(app)
    gate = TwoAtOnce(state.complete_context.verifier)
    monkeypatch.setattr(
        state,
        "complete_context",
        dataclasses.replace(state.complete_context, verifier=cast(StudyVerifier, gate)),
    )
    first = asyncio.create_task(complete(client, clinician, upload_id))
    second = asyncio.create_task(complete(client, clinician, upload_id))
    done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    winner = done.pop().result()
    assert winner.status_code == 202, winner.text
    assert winner.json()["status"] == UploadStatus.VALIDATED
    # Meanwhile the relay moves on: every instance confirmed by the PACS.
    async with state.db.sessionmaker() as session, session.begin():
        await session.execute(
            update(UploadFile)
            .where(UploadFile.upload_id == uuid.UUID(upload_id))
            .values(forward_status=ForwardStatus.CONFIRMED)
        )
    gate.second_may_go.set()
    late = await (second if first.done() and first.result() is winner else first)
    assert late.status_code == 202, late.text
    assert late.json()["status"] == UploadStatus.VALIDATED
    assert await forward_states(app, upload_id) == [ForwardStatus.CONFIRMED] * 3
    async with state.db.read_sessionmaker() as session, session.begin():
        completes = await session.scalars(
            select(AuditEvent.action).where(
                AuditEvent.object_id == upload_id, AuditEvent.action == "upload.complete"
            )
        )
        assert list(completes) == ["upload.complete"]  # recorded once
