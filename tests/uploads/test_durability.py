"""The upload API end to end, on SQLite and on PostgreSQL, with the filesystem store: what it
keeps whatever happens: an append-only audit log, nothing lost when the store fails
mid-upload, a request's writes committed before its answer."""

from __future__ import annotations

from typing import get_args

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from relaypacs.state import ReadSessionDep, SessionDep, app_state
from relaypacs.storage.faulty import FaultyStorage
from tests.api.conftest import Account
from tests.api.uploading import (
    API,
    complete,
    error_code,
    init,
    make_study,
    put_chunk,
)


class TestAuditLog:
    async def test_the_database_refuses_to_change_audit_records(self, app: FastAPI) -> None:
        for statement in ("UPDATE audit_event SET outcome = 'x'", "DELETE FROM audit_event"):
            async with app_state(app).db.sessionmaker() as session:
                # PostgreSQL: the gateway's role may not even try (the owner meets the
                # triggers: tests/security/test_audit_tamper.py).
                with pytest.raises(Exception, match=r"append-only|permission denied"):
                    async with session.begin():
                        await session.execute(text(statement))


class TestStorageFailure:
    async def test_store_failing_mid_upload_is_503_and_loses_nothing(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        clinician: Account,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        study = make_study(4)
        upload_id = (await init(client, clinician, study)).json()["id"]
        faulty = FaultyStorage(app_state(app).storage, fail_put_after=2, store_before_failing=True)
        monkeypatch.setattr(app_state(app), "storage", faulty)
        answers = [
            await put_chunk(client, clinician, upload_id, i, 0, data)
            for i, data in enumerate(study.files)
        ]
        assert [a.status_code for a in answers] == [200, 200, 503, 503]
        assert {error_code(a) for a in answers[2:]} == {"storage_unavailable"}
        assert answers[2].headers["retry-after"]
        # Status is still readable and says exactly what the server holds.
        status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
        assert [f["missing_chunks"] for f in status.json()["files"]] == [[], [], [0], [0]]
        # The store comes back: the client re-sends what is missing and completes.
        faulty.fail_put_after = None
        for i in (2, 3):
            assert (await put_chunk(client, clinician, upload_id, i, 0, study.files[i])).is_success
        done = await complete(client, clinician, upload_id)
        assert done.status_code == 202, done.text


class TestCommitBeforeAnswer:
    def test_request_sessions_commit_before_the_response_is_sent(self) -> None:
        # FastAPI's default dependency scope ("request") tears down after the response is
        # sent: a client could be told 201 and not find the upload on its next request.
        # (tests/test_gateway_process.py exercises the same over a real connection.)
        for alias in (SessionDep, ReadSessionDep):
            assert get_args(alias)[1].scope == "function"
