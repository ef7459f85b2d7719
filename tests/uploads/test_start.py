"""The upload API end to end, on SQLite and on PostgreSQL, with the filesystem store:
starting an upload (POST /uploads): the manifest, chunk sizes, resuming, one upload per study
and user, a study already accepted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.state import app_settings
from tests.api.conftest import CHUNK_SIZE, Account, MakeAccount
from tests.api.uploading import (
    API,
    Study,
    chunks_of,
    complete,
    content_digest,
    error_code,
    init,
    make_study,
    put_chunk,
    send_all,
    upload_study,
)


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
