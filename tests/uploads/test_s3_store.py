"""The upload API on the S3 store (a real moto server over HTTP) and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.main import create_app
from relaypacs.state import app_state
from relaypacs.uploads.repository import chunk_key
from tests.api.conftest import CHUNK_SIZE, PASSWORD, Account
from tests.api.uploading import (
    API,
    batch_body,
    chunks_of,
    complete,
    content_digest,
    init,
    make_study,
    put_batch,
    put_chunk,
    send_all,
    sha256_hex,
    upload_study,
)
from tests.servers import moto_server


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
async def s3_app(
    s3_url: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("s3gateway"),
        database_url=postgres_url,
        storage="s3",
        s3_endpoint_url=s3_url,
        s3_bucket=f"relaypacs-{uuid.uuid4().hex[:8]}",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_create_bucket=True,
        chunk_size=CHUNK_SIZE,
        secret_key="s3-test-signing-key-" + "y" * 32,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def s3_client(s3_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=s3_app), base_url="http://gateway"
    ) as client:
        yield client


@pytest.fixture
async def s3_clinician(s3_app: FastAPI, s3_client: httpx.AsyncClient) -> Account:
    username = f"s3user{uuid.uuid4().hex[:8]}"
    async with app_state(s3_app).db.sessionmaker() as session, session.begin():
        await create_user(session, username=username, password=PASSWORD, role=Role.CLINICIAN)
    response = await s3_client.post(
        f"{API}/auth/login", json={"username": username, "password": PASSWORD}
    )
    return Account(username, Role.CLINICIAN, response.json()["access_token"])


class TestUploadOnS3:
    async def test_multi_chunk_study_is_stored_in_s3_and_validated(
        self, s3_app: FastAPI, s3_client: httpx.AsyncClient, s3_clinician: Account
    ) -> None:
        study = make_study(3, rows=512, columns=512)  # 3 chunks per file
        response = await upload_study(s3_client, s3_clinician, study)
        assert response.status_code == 202, response.text
        assert response.json()["instance_count"] == 3
        upload_id = response.json()["id"]
        keys = [k async for k in app_state(s3_app).storage.list(f"uploads/{upload_id}/")]
        assert len(keys) == sum(len(chunks_of(f)) for f in study.files)

    async def test_chunks_with_content_digest_are_named_by_sha256_in_s3(
        self, s3_app: FastAPI, s3_client: httpx.AsyncClient, s3_clinician: Account
    ) -> None:
        study = make_study(2, rows=512, columns=512)
        upload_id = (await init(s3_client, s3_clinician, study)).json()["id"]
        chunk = chunks_of(study.files[0])[0]
        wrong = await put_chunk(
            s3_client, s3_clinician, upload_id, 0, 0, chunk, digest=content_digest(b"x")
        )
        assert wrong.status_code == 400
        assert wrong.json()["error"]["code"] == "content_digest_mismatch"
        assert [k async for k in app_state(s3_app).storage.list(f"uploads/{upload_id}/")] == []
        await send_all(s3_client, s3_clinician, upload_id, study, with_digest=True)
        response = await complete(s3_client, s3_clinician, upload_id)
        assert response.status_code == 202, response.text
        keys = sorted([k async for k in app_state(s3_app).storage.list(f"uploads/{upload_id}/")])
        expected = sorted(
            chunk_key(uuid.UUID(upload_id), f, c, sha256_hex(part))
            for f, data in enumerate(study.files)
            for c, part in enumerate(chunks_of(data))
        )
        assert keys == expected

    async def test_wrong_sha256_is_caught_reading_back_from_s3(
        self, s3_client: httpx.AsyncClient, s3_clinician: Account
    ) -> None:
        study = make_study(1, rows=512, columns=512)
        manifest = study.manifest()
        manifest["files"][0]["sha256"] = "0" * 64
        upload_id = (
            await s3_client.post(f"{API}/uploads", json=manifest, headers=s3_clinician.headers)
        ).json()["id"]
        await send_all(s3_client, s3_clinician, upload_id, study)
        response = await s3_client.post(
            f"{API}/uploads/{upload_id}/complete", headers=s3_clinician.headers
        )
        assert response.status_code == 422
        assert response.json()["error"]["details"]["files"][0]["code"] == "sha256_mismatch"

    async def test_cancel_deletes_the_objects(
        self, s3_app: FastAPI, s3_client: httpx.AsyncClient, s3_clinician: Account
    ) -> None:
        study = make_study(1)
        upload_id = (await init(s3_client, s3_clinician, study)).json()["id"]
        await send_all(s3_client, s3_clinician, upload_id, study)
        response = await s3_client.delete(
            f"{API}/uploads/{upload_id}", headers=s3_clinician.headers
        )
        assert response.status_code == 200
        assert [k async for k in app_state(s3_app).storage.list(f"uploads/{upload_id}/")] == []
        late = await s3_client.get(f"{API}/uploads/{upload_id}", headers=s3_clinician.headers)
        assert late.json()["status"] == "cancelled"


async def test_a_chunk_batch_on_s3_stores_each_part_refuses_a_bad_one_and_validates(
    s3_app: FastAPI, s3_client: httpx.AsyncClient, s3_clinician: Account
) -> None:
    """The S3 store's put_many (each part a PutObject, at once): stored parts are in the
    bucket under their keys, a part with a wrong digest is not, and the upload validates."""
    study = make_study(4)
    response = await init(s3_client, s3_clinician, study)
    assert response.status_code == 201, response.text
    upload_id = response.json()["id"]
    parts = [(i, 0, data) for i, data in enumerate(study.files)]
    answer = await put_batch(
        s3_client, s3_clinician, upload_id, batch_body(parts, digests={2: "0" * 64})
    )
    assert answer.status_code == 200, answer.text
    assert [(p["status"], p["code"]) for p in answer.json()["parts"]] == [
        ("stored", None),
        ("stored", None),
        ("refused", "content_digest_mismatch"),
        ("stored", None),
    ]
    storage = app_state(s3_app).storage
    for i, data in enumerate(study.files):
        key = chunk_key(uuid.UUID(upload_id), i, 0, sha256_hex(data))
        assert await storage.exists(key) == (i != 2)
    assert not await storage.exists(chunk_key(uuid.UUID(upload_id), 2, 0, "0" * 64))
    again = await put_batch(s3_client, s3_clinician, upload_id, batch_body(parts))
    assert [p["status"] for p in again.json()["parts"]] == [
        "already_stored",
        "already_stored",
        "stored",
        "already_stored",
    ]
    done = await complete(s3_client, s3_clinician, upload_id)
    assert done.status_code == 202, done.text
    assert {f["status"] for f in done.json()["files"]} == {"valid"}
