"""The upload API end to end, on SQLite and on PostgreSQL, with the filesystem store: who
sees an upload (its owner and an administrator, nobody without a token); listing and
cancelling one's uploads."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.state import app_state
from tests.api.conftest import Account, MakeAccount
from tests.api.uploading import (
    API,
    complete,
    error_code,
    init,
    make_study,
    put_chunk,
    upload_study,
)


class TestOwnership:
    async def test_another_users_upload_is_404_on_every_endpoint(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        owner, other = await make_account(), await make_account()
        study = make_study(1)
        upload_id = (await init(client, owner, study)).json()["id"]
        chunk = study.files[0]
        attempts = [
            await client.get(f"{API}/uploads/{upload_id}", headers=other.headers),
            await put_chunk(client, other, upload_id, 0, 0, chunk),
            await complete(client, other, upload_id),
            await client.delete(f"{API}/uploads/{upload_id}", headers=other.headers),
        ]
        assert [r.status_code for r in attempts] == [404] * 4
        assert {error_code(r) for r in attempts} == {"upload_not_found"}
        missing = await client.get(f"{API}/uploads/{uuid.uuid4()}", headers=other.headers)
        assert missing.json() == attempts[0].json()
        listing = await client.get(f"{API}/uploads", headers=other.headers)
        assert listing.json() == {"items": [], "total": 0}
        # The owner's upload is untouched.
        mine = await client.get(f"{API}/uploads/{upload_id}", headers=owner.headers)
        assert mine.json()["status"] == "pending"
        assert mine.json()["received_bytes"] == 0

    async def test_admin_sees_any_upload(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        owner, admin = await make_account(), await make_account(Role.ADMIN)
        upload_id = (await init(client, owner, make_study(1))).json()["id"]
        response = await client.get(f"{API}/uploads/{upload_id}", headers=admin.headers)
        assert response.status_code == 200

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/uploads"),
            ("POST", "/uploads"),
            ("GET", "/uploads/00000000-0000-0000-0000-000000000000"),
            ("PUT", "/uploads/00000000-0000-0000-0000-000000000000/files/0/chunks/0"),
            ("POST", "/uploads/00000000-0000-0000-0000-000000000000/complete"),
            ("DELETE", "/uploads/00000000-0000-0000-0000-000000000000"),
            ("GET", "/auth/me"),
        ],
    )
    async def test_every_endpoint_but_login_and_health_needs_a_token(
        self, client: httpx.AsyncClient, method: str, path: str
    ) -> None:
        response = await client.request(method, API + path)
        assert response.status_code == 401
        assert error_code(response) == "not_authenticated"


class TestListAndCancel:
    async def test_list_shows_my_uploads_newest_first_with_status_filter(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        first = (await upload_study(client, clinician, make_study(1))).json()["id"]
        second = (await init(client, clinician, make_study(1))).json()["id"]
        listing = (await client.get(f"{API}/uploads", headers=clinician.headers)).json()
        assert [u["id"] for u in listing["items"]] == [second, first]
        assert listing["total"] == 2
        assert "files" not in listing["items"][0]
        pending = await client.get(
            f"{API}/uploads", params={"status": "pending"}, headers=clinician.headers
        )
        assert [u["id"] for u in pending.json()["items"]] == [second]
        page = await client.get(
            f"{API}/uploads", params={"limit": 1, "offset": 1}, headers=clinician.headers
        )
        assert [u["id"] for u in page.json()["items"]] == [first]

    async def test_cancel_removes_the_chunks_and_closes_the_upload(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        upload_id = (await init(client, clinician, study)).json()["id"]
        await put_chunk(client, clinician, upload_id, 0, 0, study.files[0])
        response = await client.delete(f"{API}/uploads/{upload_id}", headers=clinician.headers)
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        assert [k async for k in app_state(app).storage.list(f"uploads/{upload_id}/")] == []
        late = await put_chunk(client, clinician, upload_id, 1, 0, study.files[1])
        assert late.status_code == 409
        assert error_code(late) == "upload_not_writable"
        # A cancelled study can be uploaded again from scratch.
        again = await init(client, clinician, study)
        assert again.status_code == 201
        assert again.json()["id"] != upload_id

    async def test_an_accepted_upload_cannot_be_cancelled(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        upload_id = (await upload_study(client, clinician, make_study(1))).json()["id"]
        response = await client.delete(f"{API}/uploads/{upload_id}", headers=clinician.headers)
        assert response.status_code == 409
        assert error_code(response) == "upload_not_cancellable"
