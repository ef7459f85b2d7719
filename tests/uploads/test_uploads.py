"""The upload API end to end, on SQLite and on PostgreSQL, with the filesystem store."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import get_args

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text, update

from relaypacs.audit.models import AuditEvent
from relaypacs.auth.models import Role, User
from relaypacs.devtools import synth, unusual
from relaypacs.state import ReadSessionDep, SessionDep, app_settings, app_state
from relaypacs.storage.faulty import FaultyStorage
from relaypacs.uploads.models import UploadChunk
from relaypacs.uploads.repository import chunk_key
from tests.api.conftest import CHUNK_SIZE, Account, MakeAccount
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
    read_uid,
    send_all,
    sha256_hex,
    upload_study,
)


async def audit_actions(app: FastAPI, object_id: str) -> list[str]:
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        rows = await session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.object_id == object_id)
            .order_by(AuditEvent.id)
        )
        return list(rows)


class TestStartUpload:
    async def test_new_study_lists_every_chunk_missing(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2, rows=512, columns=512)  # ~512 KiB each: 2 chunks per file
        response = await init(client, clinician, study)
        assert response.status_code == 201
        body = response.json()
        assert body["status"] == "pending"
        assert body["chunk_size"] == CHUNK_SIZE
        assert body["study_hash"] == study.hash
        assert [f["missing_chunks"] for f in body["files"]] == [
            list(range(len(chunks_of(data)))) for data in study.files
        ]

    async def test_the_client_may_ask_for_smaller_chunks(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        """A client on a link that is cut now and then asks for small chunks: the upload keeps
        them (chunk counts, the chunk PUT's size and limit), and every chunk is verified as
        ever."""
        study = make_study(1, rows=512, columns=512)  # ~512 KiB: 8 chunks of 64 KiB
        small = 64 * 1024
        data = study.files[0]
        response = await client.post(
            f"{API}/uploads",
            json=study.manifest() | {"chunk_size": small},
            headers=clinician.headers,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["chunk_size"] == small
        count = -(-len(data) // small)
        assert body["files"][0]["missing_chunks"] == list(range(count))
        upload_id = body["id"]
        too_large = await put_chunk(client, clinician, upload_id, 0, 0, data[: small + 1])
        assert too_large.status_code == 413
        assert error_code(too_large) == "chunk_too_large"
        first = await put_chunk(
            client, clinician, upload_id, 0, 0, data[:small], digest=content_digest(data[:small])
        )
        assert first.status_code == 200, first.text
        conflict = await put_chunk(client, clinician, upload_id, 0, 0, data[small : 2 * small])
        assert conflict.status_code == 409
        assert error_code(conflict) == "chunk_conflict"
        for index in range(1, count):
            stored = await put_chunk(
                client, clinician, upload_id, 0, index, data[index * small : (index + 1) * small]
            )
            assert stored.status_code == 200, stored.text
        done = await complete(client, clinician, upload_id)
        assert done.status_code == 202, done.text
        assert done.json()["files"][0]["status"] == "valid"

    async def test_a_chunk_size_above_the_servers_gets_the_servers(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(1)
        response = await client.post(
            f"{API}/uploads",
            json=study.manifest() | {"chunk_size": 4 * CHUNK_SIZE},
            headers=clinician.headers,
        )
        assert response.status_code == 201, response.text
        assert response.json()["chunk_size"] == CHUNK_SIZE

    @pytest.mark.parametrize("chunk_size", [0, 1024, 64 * 1024 - 1, 128 * 1024 * 1024, "big"])
    async def test_a_chunk_size_out_of_bounds_is_422(
        self, client: httpx.AsyncClient, clinician: Account, chunk_size: object
    ) -> None:
        response = await client.post(
            f"{API}/uploads",
            json=make_study(1).manifest() | {"chunk_size": chunk_size},
            headers=clinician.headers,
        )
        assert response.status_code == 422, response.text
        assert error_code(response) == "invalid_request"

    async def test_same_study_in_progress_resumes_the_same_upload(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        first = await init(client, clinician, study)
        upload_id = first.json()["id"]
        await put_chunk(client, clinician, upload_id, 0, 0, study.files[0])
        again = await init(client, clinician, study)
        assert again.status_code == 200
        assert again.json()["id"] == upload_id
        assert [f["missing_chunks"] for f in again.json()["files"]] == [[], [0]]

    async def test_the_same_study_started_many_times_at_once_is_one_upload(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(3)
        responses = await asyncio.gather(*(init(client, clinician, study) for _ in range(6)))
        assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
        assert len({r.json()["id"] for r in responses}) == 1
        listed = await client.get(f"{API}/uploads", headers=clinician.headers)
        assert [u["study_hash"] for u in listed.json()["items"]].count(study.hash) == 1

    async def test_same_study_of_another_user_is_a_separate_upload(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        study = make_study(1)
        alice, bob = await make_account(), await make_account()
        a = await init(client, alice, study)
        b = await init(client, bob, study)
        assert (a.status_code, b.status_code) == (201, 201)
        assert a.json()["id"] != b.json()["id"]

    async def test_a_study_another_user_already_uploaded_is_a_new_upload_of_ones_own(
        self, client: httpx.AsyncClient, make_account: MakeAccount
    ) -> None:
        """A second clinician with the same CD is not turned away, and learns nothing of the
        first one's upload."""
        study = make_study(2)
        alice, bob = await make_account(), await make_account()
        done = await upload_study(client, alice, study)
        assert done.status_code == 202, done.text
        started = await init(client, bob, study)
        assert started.status_code == 201, started.text
        assert done.json()["id"] not in started.text
        assert started.json()["status"] == "pending"
        await send_all(client, bob, started.json()["id"], study)
        completed = await complete(client, bob, started.json()["id"])
        assert completed.status_code == 202, completed.text
        assert completed.json()["id"] == started.json()["id"]
        assert completed.json()["status"] == done.json()["status"]
        listed = await client.get("/api/v1/uploads", headers=bob.headers)
        assert [u["id"] for u in listed.json()["items"]] == [started.json()["id"]]

    async def test_study_already_accepted_is_409_with_the_existing_upload(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        done = await upload_study(client, clinician, study)
        assert done.status_code == 202, done.text
        again = await init(client, clinician, study)
        assert again.status_code == 409
        assert error_code(again) == "study_already_delivered"
        assert again.json()["error"]["details"]["upload"]["id"] == done.json()["id"]

    @pytest.mark.parametrize(
        ("mutate", "field"),
        [
            (lambda m: m["files"][0].update(sha256="xyz"), "sha256"),
            (lambda m: m["files"][0].update(size=0), "size"),
            (lambda m: m["files"][0].update(name="a\x00b"), "name"),
            (lambda m: m.update(study_instance_uid="1.2.abc"), "study_instance_uid"),
            (lambda m: m.update(files=[]), "files"),
            (lambda m: m["files"][0].update(role="admin"), "role"),
            (lambda m: m.update(status="validated"), "status"),
        ],
    )
    async def test_invalid_manifest_is_422(
        self, client: httpx.AsyncClient, clinician: Account, mutate: object, field: str
    ) -> None:
        manifest = make_study(1).manifest()
        mutate(manifest)  # type: ignore[operator]
        response = await client.post(f"{API}/uploads", json=manifest, headers=clinician.headers)
        assert response.status_code == 422
        assert error_code(response) == "invalid_request"
        assert field in str(response.json()["error"]["details"])

    async def test_the_same_content_twice_is_one_instance_sent_once(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        study = Study(study.uid, [study.files[0], study.files[1], study.files[0]], ["a", "b", "c"])
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["instance_count"], body["refused_files"]) == (2, 0)
        files = body["files"]
        assert [f["status"] for f in files] == ["valid"] * 3
        assert [f["duplicate_of"] for f in files] == [None, None, 0]
        # The copy is not forwarded: the first file is.
        assert [f["forward_status"] is not None for f in files] == [True, True, False]

    async def test_path_like_names_are_display_names_only(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        study.names = ["../../../etc/passwd", "/abs/../../x\\..\\y"]
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        body = response.json()
        assert [f["name"] for f in body["files"]] == study.names
        root: Path = app_settings(app).storage_root
        stored = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
        mine = [p for p in stored if p.parts[1] == body["id"]]
        assert len(mine) == 2
        assert all(p.parts[0] == "uploads" for p in mine)
        assert not (root.parent / "etc").exists()


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


class TestComplete:
    async def test_valid_study_is_validated_and_audited(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(3)
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "validated"
        assert body["instance_count"] == 3
        assert {f["status"] for f in body["files"]} == {"valid"}
        assert {f["kind"] for f in body["files"]} == {"instance"}
        assert body["completed_at"] is not None
        assert await audit_actions(app, body["id"]) == ["upload.start", "upload.complete"]
        again = await complete(client, clinician, body["id"])
        assert again.status_code == 202
        assert again.json()["status"] == "validated"

    async def test_missing_chunks_are_409_with_the_list(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        upload_id = (await init(client, clinician, study)).json()["id"]
        await put_chunk(client, clinician, upload_id, 0, 0, study.files[0])
        response = await complete(client, clinician, upload_id)
        assert response.status_code == 409
        assert error_code(response) == "upload_incomplete"
        assert response.json()["error"]["details"]["missing"] == [
            {"file_index": 1, "missing_chunks": [0]}
        ]

    async def test_wrong_sha256_rejects_that_file(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        study = make_study(2)
        manifest = study.manifest()
        manifest["files"][1]["sha256"] = sha256_hex(b"something else")
        upload_id = (
            await client.post(f"{API}/uploads", json=manifest, headers=clinician.headers)
        ).json()["id"]
        await send_all(client, clinician, upload_id, study)
        response = await complete(client, clinician, upload_id)
        assert response.status_code == 202, response.text
        files = response.json()["files"]
        assert [(f["status"], (f["error"] or {}).get("code")) for f in files] == [
            ("valid", None),
            ("rejected", "sha256_mismatch"),
        ]
        assert response.json()["refused_files"] == 1

    @pytest.mark.parametrize(
        ("make_bad", "code"),
        [
            (lambda s: b"%PDF-1.7 this is not dicom" * 50, "not_dicom"),
            (
                lambda s: unusual.make_truncated(s.files[0], keep=len(s.files[0]) // 2),
                "dicom_truncated",
            ),
            (lambda s: unusual.make_preamble_executable(), "dicom_preamble_executable"),
            (lambda s: unusual.make_deflate_bomb(), "dicom_inflate_too_large"),
            (lambda s: unusual.make_deep_nesting(), "dicom_too_deep"),
            (lambda s: unusual.make_missing_uid(), "dicom_missing_uid"),
            (lambda s: make_study(1).files[0], "study_uid_mismatch"),
        ],
        ids=[
            "not_dicom",
            "truncated",
            "exe_preamble",
            "deflate_bomb",
            "deep",
            "no_uid",
            "other_study",
        ],
    )
    @pytest.mark.parametrize("strict", [False, True], ids=["partial", "all_or_nothing"])
    async def test_bad_files_get_their_code_and_the_rest_is_kept(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        clinician: Account,
        make_bad: object,
        code: str,
        strict: bool,
    ) -> None:
        good = make_study(2, rows=512, columns=512)
        bad: bytes = make_bad(good)  # type: ignore[operator]
        study = Study(good.uid, [*good.files, bad], ["a.dcm", "b.dcm", "bad.dcm"], strict)
        upload_id = (await init(client, clinician, study)).json()["id"]
        await send_all(client, clinician, upload_id, study)
        response = await complete(client, clinician, upload_id)
        if strict:  # one refused file refuses the study
            assert response.status_code == 422, response.text
            files = response.json()["error"]["details"]["files"]
            assert [(f["index"], f["name"], f["code"]) for f in files] == [(2, "bad.dcm", code)]
            assert "all or nothing" in response.json()["error"]["message"]
        else:  # the study goes on without its bad file
            assert response.status_code == 202, response.text
            body = response.json()
            assert (body["instance_count"], body["refused_files"]) == (2, 1)
            files = [f for f in body["files"] if f["error"]]
            assert [(f["index"], f["name"], f["error"]["code"]) for f in files] == [
                (2, "bad.dcm", code)
            ]
            assert [f["forward_status"] for f in body["files"]] == ["pending", "pending", None]
        assert synth.DEFAULT_PATIENT.name not in str(files)  # error messages carry no patient data
        status = await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)
        assert status.json()["status"] == ("rejected" if strict else "validated")
        # Every stored chunk is still there and intact.
        keys = [k async for k in app_state(app).storage.list(f"uploads/{upload_id}/")]
        assert len(keys) == sum(len(chunks_of(f)) for f in study.files)
        first = b"".join(
            [
                await app_state(app).storage.get(k)
                for k in sorted(keys)
                if k.split("/")[2].startswith("0-")
            ]
        )
        assert first == good.files[0]
        # The process is healthy and takes the next upload.
        assert (await client.get(f"{API}/health")).status_code == 200
        assert (await upload_study(client, clinician, make_study(1))).status_code == 202
        # Completing again changes nothing and answers the same.
        again = await complete(client, clinician, upload_id)
        assert again.status_code == (422 if strict else 202)

    async def test_dicomdir_is_accepted_but_not_an_instance(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        good = make_study(2)
        study = Study(
            good.uid, [*good.files, unusual.make_dicomdir_bytes()], ["a", "b", "DICOMDIR"]
        )
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        assert response.json()["instance_count"] == 2
        assert response.json()["files"][2]["kind"] == "dicomdir"

    async def test_non_executable_preamble_is_accepted_and_audited(
        self, app: FastAPI, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        tiff = unusual.make_tiff_preamble()
        uid = read_uid(tiff, "StudyInstanceUID")
        study = Study(uid, [tiff], ["tiff.dcm"])
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        assert response.json()["files"][0]["preamble"] == "nonzero"
        assert "dicom.preamble_nonzero" in await audit_actions(app, response.json()["id"])

    async def test_differing_copies_of_one_sop_instance_are_all_refused(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        good = make_study(2)
        sop = read_uid(good.files[0], "SOPInstanceUID")
        twin = synth.make_instance(
            study_uid=good.uid, series_uid="1.2.3", sop_uid=sop, rows=64, columns=64, seed=99
        )
        truncated = unusual.make_truncated(good.files[0], keep=len(good.files[0]) // 2)
        study = Study(
            good.uid, [good.files[0], good.files[1], twin, truncated], ["a", "b", "twin", "cut"]
        )
        response = await upload_study(client, clinician, study)
        assert response.status_code == 202, response.text
        files = response.json()["files"]
        # The truncated copy is refused for what it is and does not count as a copy; the two
        # valid copies with other bytes are both refused, each naming the other; b goes on.
        codes = [(f["name"], (f["error"] or {}).get("code")) for f in files]
        assert codes == [
            ("a", "duplicate_sop_instance"),
            ("b", None),
            ("twin", "duplicate_sop_instance"),
            ("cut", "dicom_truncated"),
        ]
        assert "twin (file 2)" in files[0]["error"]["message"]
        assert "a (file 0)" in files[2]["error"]["message"]
        assert response.json()["instance_count"] == 1

    async def test_an_upload_with_no_valid_instance_is_rejected(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        good = make_study(1)
        sop = read_uid(good.files[0], "SOPInstanceUID")
        twin = synth.make_instance(
            study_uid=good.uid, series_uid="1.2.3", sop_uid=sop, rows=64, columns=64, seed=99
        )
        response = await upload_study(
            client, clinician, Study(good.uid, [good.files[0], twin], ["a", "b"])
        )
        assert response.status_code == 422
        files = response.json()["error"]["details"]["files"]
        assert [(f["index"], f["code"]) for f in files] == [
            (0, "duplicate_sop_instance"),
            (1, "duplicate_sop_instance"),
        ]


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
