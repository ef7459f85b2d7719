"""The status poll and the list (ReadRoute, read as columns): the same answers as a FastAPI route
with the same declarations, and the same checks in the same order, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.dependencies import get_current_user
from relaypacs.auth.models import Role, User
from relaypacs.main import install_error_handlers
from relaypacs.state import app_state
from relaypacs.uploads import router as uploads
from relaypacs.uploads.schemas import UploadList, UploadRead
from tests.api.conftest import Account, MakeAccount
from tests.api.uploading import (
    API,
    Study,
    chunks_of,
    error_code,
    init,
    make_study,
    put_chunk,
    upload_study,
)

NO_ID = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
async def reference() -> AsyncIterator[httpx.AsyncClient]:
    """The two endpoints as plain FastAPI routes (FastAPI solving their parameters), with the
    gateway's error handlers: what ReadRoute's answers to bad parameters must equal."""
    app = FastAPI()
    install_error_handlers(app)

    async def anyone() -> None:
        return None

    app.dependency_overrides[get_current_user] = anyone
    app.add_api_route(f"{API}/uploads", uploads.list_uploads, response_model=UploadList)
    app.add_api_route(f"{API}/uploads/{{upload_id}}", uploads.get_upload, response_model=UploadRead)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


async def send_first_file(
    client: httpx.AsyncClient, account: Account, upload_id: str, study: Study
) -> None:
    for chunk_index, chunk in enumerate(chunks_of(study.files[0])):
        response = await put_chunk(client, account, upload_id, 0, chunk_index, chunk)
        assert response.status_code == 200, response.text


BAD_REQUESTS = [
    "/uploads/not-a-uuid",
    "/uploads/1234",
    f"/uploads/{NO_ID}?files=maybe",
    f"/uploads/{NO_ID}?files=",
    "/uploads/not-a-uuid?files=maybe",  # both: path first, then query
    "/uploads?limit=0",
    "/uploads?limit=201",
    "/uploads?limit=1.5",
    "/uploads?limit=",
    "/uploads?offset=-1",
    "/uploads?offset=99999999999999999999",
    "/uploads?status=bogus",
    "/uploads?status=bogus&limit=0&offset=-1",  # every problem, in the declared order
]


class TestSameAnswersAsAFastApiRoute:
    @pytest.mark.parametrize("path", BAD_REQUESTS)
    async def test_bad_parameters_are_the_same_422(
        self,
        client: httpx.AsyncClient,
        clinician: Account,
        reference: httpx.AsyncClient,
        path: str,
    ) -> None:
        ours = await client.get(API + path, headers=clinician.headers)
        theirs = await reference.get(API + path)
        assert theirs.status_code == 422, theirs.text
        assert ours.status_code == 422, ours.text
        assert ours.json() == theirs.json()
        assert ours.json()["error"]["code"] == "invalid_request"

    async def test_the_status_is_the_full_views_summary(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        """Read as columns (UploadRow), the status is field for field the view read through
        the ORM (the files=true view), without the files; the list shows the same summary."""
        study = make_study(2)
        done = await upload_study(client, clinician, study)
        assert done.status_code == 202, done.text
        pending = make_study(2)
        partial = (await init(client, clinician, pending)).json()["id"]
        await send_first_file(client, clinician, partial, pending)
        for upload_id in (done.json()["id"], partial):
            full = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
            status = await client.get(
                f"{API}/uploads/{upload_id}?files=false", headers=clinician.headers
            )
            assert status.status_code == full.status_code == 200
            assert status.headers["content-type"] == "application/json"
            expected = {**full.json(), "files": None}
            assert status.json() == expected
            listing = await client.get(f"{API}/uploads?limit=200", headers=clinician.headers)
            (item,) = [i for i in listing.json()["items"] if i["id"] == upload_id]
            assert item == {k: v for k, v in expected.items() if k not in ("files", "forwarding")}

    async def test_received_bytes_count_the_stored_chunks(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        upload_id = (await init(client, clinician, study)).json()["id"]
        await send_first_file(client, clinician, upload_id, study)
        status = await client.get(
            f"{API}/uploads/{upload_id}?files=false", headers=clinician.headers
        )
        assert status.json()["received_bytes"] == len(study.files[0])
        listing = await client.get(f"{API}/uploads", headers=clinician.headers)
        (item,) = [i for i in listing.json()["items"] if i["id"] == upload_id]
        assert item["received_bytes"] == len(study.files[0])


class TestChecksInOrder:
    async def test_no_token_is_401_before_any_parameter_is_looked_at(
        self, client: httpx.AsyncClient
    ) -> None:
        for path in ("/uploads/not-a-uuid?files=maybe", "/uploads?limit=0", "/uploads"):
            response = await client.get(API + path)
            assert response.status_code == 401
            assert error_code(response) == "not_authenticated"
        forged = await client.get(
            f"{API}/uploads/{NO_ID}", headers={"Authorization": "Bearer not.a.token"}
        )
        assert forged.status_code == 401

    async def test_the_list_is_refused_to_an_administrator_before_its_parameters(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        admin = await make_account(Role.ADMIN)
        for path in ("/uploads", "/uploads?limit=0"):
            response = await client.get(API + path, headers=admin.headers)
            assert response.status_code == 403
            assert error_code(response) == "forbidden"

    async def test_a_temporary_password_may_not_poll(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        account = await make_account()
        upload_id = (await init(client, account, make_study(1))).json()["id"]
        async with app_state(app).db.sessionmaker() as session, session.begin():
            await session.execute(
                update(User)
                .where(User.username == account.username)
                .values(must_change_password=True)
            )
        for path in (f"/uploads/{upload_id}?files=false", "/uploads", "/uploads/not-a-uuid"):
            response = await client.get(API + path, headers=account.headers)
            assert response.status_code == 403, response.text
            assert error_code(response) == "password_change_required"

    async def test_another_users_upload_is_404_and_audited_as_denied(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        owner, other = await make_account(), await make_account()
        upload_id = (await init(client, owner, make_study(1))).json()["id"]
        theirs = await client.get(f"{API}/uploads/{upload_id}?files=false", headers=other.headers)
        missing = await client.get(
            f"{API}/uploads/{uuid.uuid4()}?files=false", headers=other.headers
        )
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json() == missing.json()
        assert error_code(theirs) == "upload_not_found"
        async with app_state(app).db.read_sessionmaker() as session, session.begin():
            denied = (
                await session.scalars(
                    select(AuditEvent).where(
                        AuditEvent.object_id == upload_id, AuditEvent.action == "access.denied"
                    )
                )
            ).all()
        assert len(denied) == 1
        assert denied[0].outcome == "denied"
        assert denied[0].details["status"] == 404

    async def test_an_administrators_status_read_is_audited_the_owners_poll_is_not(
        self, app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        owner, admin = await make_account(), await make_account(Role.ADMIN)
        upload_id = (await init(client, owner, make_study(1))).json()["id"]
        for account in (owner, owner, admin):
            answer = await client.get(
                f"{API}/uploads/{upload_id}?files=false", headers=account.headers
            )
            assert answer.status_code == 200
        async with app_state(app).db.read_sessionmaker() as session, session.begin():
            reads = (
                await session.scalars(
                    select(AuditEvent).where(
                        AuditEvent.object_id == upload_id, AuditEvent.action == "upload.read"
                    )
                )
            ).all()
        assert [(r.actor_role, r.details) for r in reads] == [
            ("admin", {"files": False, "owner": False})
        ]

    async def test_every_list_with_items_is_audited(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        upload_id = (await init(client, clinician, make_study(1))).json()["id"]
        for _ in range(3):
            assert (
                await client.get(f"{API}/uploads", headers=clinician.headers)
            ).status_code == 200
        async with app_state(app).db.read_sessionmaker() as session, session.begin():
            lists = (
                await session.scalars(select(AuditEvent).where(AuditEvent.action == "upload.list"))
            ).all()
        mine = [e for e in lists if e.details["upload_ids"] == [upload_id]]
        assert len(mine) == 3
