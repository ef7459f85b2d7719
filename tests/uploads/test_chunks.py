"""The upload API end to end, on SQLite and on PostgreSQL, with the filesystem store: chunk
PUTs: checksums (Content-MD5, Content-Digest), repeats, conflicts, indexes and sizes out of
bounds, any order and in parallel."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from relaypacs.auth.models import User
from relaypacs.state import app_state
from relaypacs.uploads.models import UploadChunk
from relaypacs.uploads.repository import chunk_key
from tests.api.conftest import CHUNK_SIZE, Account
from tests.api.uploading import (
    API,
    Study,
    chunk_url,
    chunks_of,
    complete,
    content_digest,
    content_md5,
    error_code,
    init,
    make_study,
    put_chunk,
    send_all,
    sha256_hex,
)


class TestChunks:
    @pytest.fixture
    async def upload(self, client: httpx.AsyncClient, clinician: Account) -> tuple[str, Study]:
        study = make_study(2, rows=512, columns=512)
        response = await init(client, clinician, study)
        return response.json()["id"], study

    async def test_same_chunk_again_succeeds_and_changes_nothing(
        self, client: httpx.AsyncClient, clinician: Account, upload: tuple[str, Study]
    ) -> None:
        upload_id, study = upload
        chunk = chunks_of(study.files[0])[0]
        first = await put_chunk(client, clinician, upload_id, 0, 0, chunk)
        second = await put_chunk(client, clinician, upload_id, 0, 0, chunk)
        assert first.json()["already_stored"] is False
        assert second.status_code == 200
        assert second.json()["already_stored"] is True

    async def test_different_bytes_for_a_stored_chunk_is_409_and_keeps_the_original(
        self, client: httpx.AsyncClient, clinician: Account, upload: tuple[str, Study]
    ) -> None:
        upload_id, study = upload
        chunk = chunks_of(study.files[0])[0]
        await put_chunk(client, clinician, upload_id, 0, 0, chunk)
        forged = bytes(len(chunk))
        response = await put_chunk(client, clinician, upload_id, 0, 0, forged)
        assert response.status_code == 409
        assert error_code(response) == "chunk_conflict"
        await send_all(client, clinician, upload_id, study)
        done = await complete(client, clinician, upload_id)
        assert done.status_code == 202, done.text

    @pytest.mark.parametrize(
        ("checksum", "code"),
        [("md5", "content_md5_mismatch"), ("digest", "content_digest_mismatch")],
    )
    async def test_a_wrong_checksum_is_rejected_and_nothing_is_kept(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        clinician: Account,
        upload: tuple[str, Study],
        checksum: str,
        code: str,
    ) -> None:
        upload_id, study = upload
        chunk = chunks_of(study.files[0])[0]
        other = b"other"
        wrong = (
            {"md5": content_md5(other)} if checksum == "md5" else {"digest": content_digest(other)}
        )
        response = await put_chunk(client, clinician, upload_id, 0, 0, chunk, **wrong)
        assert response.status_code == 400
        assert error_code(response) == code
        status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
        assert status.json()["files"][0]["missing_chunks"][0] == 0
        assert status.json()["received_bytes"] == 0
        assert [k async for k in app_state(app).storage.list(f"uploads/{upload_id}/")] == []

    @pytest.mark.parametrize("header", [None, "not base64!", "AAAA"])
    async def test_missing_or_malformed_md5_is_400(
        self,
        client: httpx.AsyncClient,
        clinician: Account,
        upload: tuple[str, Study],
        header: str | None,
    ) -> None:
        upload_id, study = upload
        headers = dict(clinician.headers)
        if header is not None:
            headers["Content-MD5"] = header
        response = await client.put(
            chunk_url(upload_id, 0, 0), content=chunks_of(study.files[0])[0], headers=headers
        )
        assert response.status_code == 400
        assert error_code(response) == "content_md5_required"

    async def test_content_digest_names_the_chunk_by_its_sha256(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        clinician: Account,
        upload: tuple[str, Study],
    ) -> None:
        upload_id, study = upload
        chunk = chunks_of(study.files[0])[0]
        response = await put_chunk(
            client, clinician, upload_id, 0, 0, chunk, digest=content_digest(chunk)
        )
        assert response.status_code == 200, response.text
        assert response.json()["already_stored"] is False
        assert [k async for k in app_state(app).storage.list(f"uploads/{upload_id}/")] == [
            chunk_key(uuid.UUID(upload_id), 0, 0, sha256_hex(chunk))
        ]
        # The same bytes with Content-MD5 are the same chunk: chunks are compared by SHA-256
        again = await put_chunk(client, clinician, upload_id, 0, 0, chunk)
        assert again.json()["already_stored"] is True
        other = bytes(len(chunk))
        conflict = await put_chunk(
            client, clinician, upload_id, 0, 0, other, digest=content_digest(other)
        )
        assert conflict.status_code == 409
        assert error_code(conflict) == "chunk_conflict"
        await send_all(client, clinician, upload_id, study)
        done = await complete(client, clinician, upload_id)
        assert done.status_code == 202, done.text
        assert done.json()["status"] == "validated"

    async def test_both_checksums_are_checked_when_both_are_sent(
        self, client: httpx.AsyncClient, clinician: Account, upload: tuple[str, Study]
    ) -> None:
        upload_id, study = upload
        chunk = chunks_of(study.files[0])[0]
        for md5, digest, code in [
            (content_md5(b"other"), content_digest(chunk), "content_md5_mismatch"),
            (content_md5(chunk), content_digest(b"other"), "content_digest_mismatch"),
        ]:
            response = await client.put(
                chunk_url(upload_id, 0, 0),
                content=chunk,
                headers={**clinician.headers, "Content-MD5": md5, "Content-Digest": digest},
            )
            assert response.status_code == 400
            assert error_code(response) == code
        status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
        assert status.json()["received_bytes"] == 0

    @pytest.mark.parametrize(
        ("header", "code"),
        [
            ("sha-256=AAAA", "content_digest_invalid"),
            ("sha-256=:not base64!:", "content_digest_invalid"),
            ("sha-256=:AAAA:", "content_digest_invalid"),  # not 32 bytes
            ("sha-256", "content_digest_invalid"),
            (f"sha-256=:{'A' * 43}=:, sha-256=:{'A' * 43}=:", "content_digest_invalid"),
            ("sha-512=:AAAA:", "content_md5_required"),  # no sha-256, no Content-MD5
        ],
    )
    async def test_malformed_content_digest_is_400(
        self,
        client: httpx.AsyncClient,
        clinician: Account,
        upload: tuple[str, Study],
        header: str,
        code: str,
    ) -> None:
        upload_id, study = upload
        response = await client.put(
            chunk_url(upload_id, 0, 0),
            content=chunks_of(study.files[0])[0],
            headers={**clinician.headers, "Content-Digest": header},
        )
        assert response.status_code == 400
        assert error_code(response) == code

    async def test_chunks_recorded_before_sha256_naming_still_resume_and_complete(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        clinician: Account,
        upload: tuple[str, Study],
    ) -> None:
        """A chunk row from before migration 0004 (MD5, no SHA-256; its object named by the
        MD5): the same bytes again, sent with Content-Digest only, are already stored (and
        leave no second object); other bytes are a conflict; `complete` reads it."""
        upload_id, study = upload
        chunk = chunks_of(study.files[0])[0]
        md5 = hashlib.md5(chunk).hexdigest()
        legacy_key = chunk_key(uuid.UUID(upload_id), 0, 0, md5)
        await app_state(app).storage.put(legacy_key, chunk)
        async with app_state(app).db.sessionmaker() as session, session.begin():
            session.add(
                UploadChunk(
                    upload_id=uuid.UUID(upload_id),
                    file_index=0,
                    chunk_index=0,
                    size=len(chunk),
                    md5=md5,
                )
            )
        again = await put_chunk(
            client, clinician, upload_id, 0, 0, chunk, digest=content_digest(chunk)
        )
        assert again.status_code == 200, again.text
        assert again.json()["already_stored"] is True
        other = bytes(len(chunk))
        conflict = await put_chunk(
            client, clinician, upload_id, 0, 0, other, digest=content_digest(other)
        )
        assert conflict.status_code == 409
        keys = [k async for k in app_state(app).storage.list(f"uploads/{upload_id}/")]
        assert keys == [legacy_key]
        await send_all(client, clinician, upload_id, study)
        done = await complete(client, clinician, upload_id)
        assert done.status_code == 202, done.text
        assert done.json()["status"] == "validated"

    @pytest.mark.parametrize(("file_index", "chunk_index"), [(0, 3), (2, 0), (-1, 0), (0, -1)])
    async def test_out_of_range_indexes_are_404(
        self,
        client: httpx.AsyncClient,
        clinician: Account,
        upload: tuple[str, Study],
        file_index: int,
        chunk_index: int,
    ) -> None:
        upload_id, _ = upload
        response = await put_chunk(client, clinician, upload_id, file_index, chunk_index, b"x")
        assert response.status_code == 404
        assert error_code(response) == "chunk_out_of_range"

    @pytest.mark.parametrize(
        ("upload_id", "file_index", "chunk_index", "field"),
        [
            ("not-a-uuid", "0", "0", "upload_id"),
            (None, "x", "0", "file_index"),
            (None, "0", "1.5", "chunk_index"),
        ],
    )
    async def test_malformed_path_parameters_are_422(
        self,
        client: httpx.AsyncClient,
        clinician: Account,
        upload: tuple[str, Study],
        upload_id: str | None,
        file_index: str,
        chunk_index: str,
        field: str,
    ) -> None:
        # The chunk route checks its parameters itself (relaypacs.uploads.router.ChunkRoute):
        # the same answer as FastAPI's own validation on every other route.
        chunk = chunks_of(upload[1].files[0])[0]
        response = await client.put(
            f"{API}/uploads/{upload_id or upload[0]}/files/{file_index}/chunks/{chunk_index}",
            content=chunk,
            headers={**clinician.headers, "Content-MD5": content_md5(chunk)},
        )
        assert response.status_code == 422
        assert error_code(response) == "invalid_request"
        assert response.json()["error"]["details"]["problems"][0]["field"] == f"path.{field}"

    async def test_a_temporary_password_cannot_send_chunks(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        clinician: Account,
        upload: tuple[str, Study],
    ) -> None:
        upload_id, study = upload

        async def temporary_password(value: bool) -> None:
            async with app_state(app).db.sessionmaker() as session, session.begin():
                await session.execute(
                    update(User)
                    .where(User.username == clinician.username)
                    .values(must_change_password=value)
                )

        await temporary_password(True)
        try:
            response = await put_chunk(
                client, clinician, upload_id, 0, 0, chunks_of(study.files[0])[0]
            )
        finally:
            await temporary_password(False)
        assert response.status_code == 403
        assert error_code(response) == "password_change_required"
        status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
        assert status.json()["received_bytes"] == 0

    async def test_chunk_larger_than_the_chunk_size_is_413(
        self, client: httpx.AsyncClient, clinician: Account, upload: tuple[str, Study]
    ) -> None:
        upload_id, _ = upload
        response = await put_chunk(client, clinician, upload_id, 0, 0, bytes(CHUNK_SIZE + 1))
        assert response.status_code == 413
        assert error_code(response) == "chunk_too_large"

    async def test_chunk_of_the_wrong_size_is_400(
        self, client: httpx.AsyncClient, clinician: Account, upload: tuple[str, Study]
    ) -> None:
        upload_id, study = upload
        short = chunks_of(study.files[0])[0][:-1]
        response = await put_chunk(client, clinician, upload_id, 0, 0, short)
        assert response.status_code == 400
        assert error_code(response) == "chunk_size_mismatch"

    async def test_chunks_in_any_order_and_in_parallel(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(6, rows=512, columns=512)
        upload_id = (await init(client, clinician, study)).json()["id"]
        jobs = [
            (f, c, chunk)
            for f, data in enumerate(study.files)
            for c, chunk in enumerate(chunks_of(data))
        ]
        jobs.reverse()
        responses = await asyncio.gather(
            *(put_chunk(client, clinician, upload_id, f, c, chunk) for f, c, chunk in jobs),
            # the same chunks twice at once: both succeed, one of them stored it
            *(put_chunk(client, clinician, upload_id, f, c, chunk) for f, c, chunk in jobs[:3]),
        )
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        done = await complete(client, clinician, upload_id)
        assert done.status_code == 202, done.text
        assert done.json()["instance_count"] == 6
        assert done.json()["received_bytes"] == sum(len(f) for f in study.files)
