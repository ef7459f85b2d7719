"""Chunk batches (``POST /uploads/{id}/chunks:batch``) on SQLite and PostgreSQL, with the
filesystem store: each part stored durably and recorded, or refused on its own."""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from relaypacs.auth.models import Role
from relaypacs.state import app_state
from relaypacs.uploads.models import UploadChunk
from relaypacs.uploads.repository import chunk_key
from tests.api.conftest import CHUNK_SIZE, Account, MakeAccount
from tests.api.uploading import (
    API,
    batch_body,
    batch_url,
    complete,
    error_code,
    init,
    make_study,
    put_batch,
    sha256_hex,
)


async def start(
    client: httpx.AsyncClient, account: Account, instances: int
) -> tuple[str, list[bytes]]:
    study = make_study(instances)
    response = await init(client, account, study)
    assert response.status_code == 201, response.text
    return response.json()["id"], study.files


async def recorded(app: FastAPI, upload_id: str) -> dict[int, str | None]:
    """file index -> sha256 of the chunk rows recorded for the upload."""
    async with app_state(app).db.read_sessionmaker() as session, session.begin():
        rows = await session.execute(
            select(UploadChunk.file_index, UploadChunk.sha256).where(
                UploadChunk.upload_id == uuid.UUID(upload_id)
            )
        )
        return dict(rows.all())


async def test_a_batch_stores_each_part_and_the_upload_validates(
    app: FastAPI, client: httpx.AsyncClient, clinician: Account
) -> None:
    upload_id, files = await start(client, clinician, 5)
    response = await put_batch(
        client, clinician, upload_id, batch_body([(i, 0, d) for i, d in enumerate(files)])
    )
    assert response.status_code == 200, response.text
    parts = response.json()["parts"]
    assert [(p["file_index"], p["status"], p["code"]) for p in parts] == [
        (i, "stored", None) for i in range(5)
    ]
    assert [p["size"] for p in parts] == [len(d) for d in files]
    assert await recorded(app, upload_id) == {i: sha256_hex(d) for i, d in enumerate(files)}
    storage = app_state(app).storage
    for i, data in enumerate(files):
        key = chunk_key(uuid.UUID(upload_id), i, 0, sha256_hex(data))
        assert await storage.get(key) == data
    view = (await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)).json()
    assert all(f["missing_chunks"] == [] for f in view["files"])
    done = await complete(client, clinician, upload_id)
    assert done.status_code == 202, done.text
    assert done.json()["status"] in ("validated", "queued")
    assert {f["status"] for f in done.json()["files"]} == {"valid"}


async def test_a_bad_digest_refuses_that_part_and_stores_the_others(
    app: FastAPI, client: httpx.AsyncClient, clinician: Account
) -> None:
    upload_id, files = await start(client, clinician, 3)
    body = batch_body(
        [(i, 0, d) for i, d in enumerate(files)], digests={1: sha256_hex(b"other bytes")}
    )
    response = await put_batch(client, clinician, upload_id, body)
    assert response.status_code == 200, response.text
    parts = response.json()["parts"]
    assert [(p["status"], p["code"]) for p in parts] == [
        ("stored", None),
        ("refused", "content_digest_mismatch"),
        ("stored", None),
    ]
    assert parts[1]["message"]
    assert set(await recorded(app, upload_id)) == {0, 2}
    view = (await client.get(f"{API}/uploads/{upload_id}", headers=clinician.headers)).json()
    assert [f["missing_chunks"] for f in view["files"]] == [[], [0], []]
    # Only the refused part is sent again; the upload then completes.
    again = await put_batch(client, clinician, upload_id, batch_body([(1, 0, files[1])]))
    assert again.json()["parts"][0]["status"] == "stored"
    done = await complete(client, clinician, upload_id)
    assert done.status_code == 202, done.text


async def test_a_repeated_batch_is_idempotent_and_a_conflicting_part_refused(
    app: FastAPI, client: httpx.AsyncClient, clinician: Account
) -> None:
    upload_id, files = await start(client, clinician, 3)
    body = batch_body([(i, 0, d) for i, d in enumerate(files)])
    first = await put_batch(client, clinician, upload_id, body)
    assert {p["status"] for p in first.json()["parts"]} == {"stored"}
    second = await put_batch(client, clinician, upload_id, body)
    assert second.status_code == 200, second.text
    assert [p["status"] for p in second.json()["parts"]] == ["already_stored"] * 3
    # File 0 again with other bytes of its size: refused, the stored chunk kept; file 1 fine.
    other = bytes(b ^ 0xFF for b in files[0])
    mixed = await put_batch(
        client, clinician, upload_id, batch_body([(0, 0, other), (1, 0, files[1])])
    )
    assert mixed.status_code == 200, mixed.text
    assert [(p["status"], p["code"]) for p in mixed.json()["parts"]] == [
        ("refused", "chunk_conflict"),
        ("already_stored", None),
    ]
    assert (await recorded(app, upload_id))[0] == sha256_hex(files[0])
    storage = app_state(app).storage
    assert not await storage.exists(chunk_key(uuid.UUID(upload_id), 0, 0, sha256_hex(other)))
    done = await complete(client, clinician, upload_id)
    assert done.status_code == 202, done.text


async def test_an_oversized_batch_is_413_before_its_body_is_read(
    client: httpx.AsyncClient, clinician: Account, app: FastAPI
) -> None:
    upload_id, _ = await start(client, clinician, 2)
    limit = app_state(app).chunk_intake.batch_max_bytes
    assert limit > CHUNK_SIZE
    response = await client.post(
        batch_url(upload_id),
        content=b"\0" * (limit + 1),
        headers={**clinician.headers, "Content-Type": "application/vnd.relaypacs.chunk-batch"},
    )
    assert response.status_code == 413
    assert error_code(response) == "chunk_batch_too_large"


async def test_another_users_upload_is_404(
    client: httpx.AsyncClient, clinician: Account, make_account: MakeAccount
) -> None:
    upload_id, files = await start(client, clinician, 2)
    other = await make_account(Role.CLINICIAN)
    response = await put_batch(
        client, other, upload_id, batch_body([(i, 0, d) for i, d in enumerate(files)])
    )
    assert response.status_code == 404
    assert error_code(response) == "upload_not_found"
    admin = await make_account(Role.ADMIN)
    response = await put_batch(client, admin, upload_id, batch_body([(0, 0, files[0])]))
    assert response.status_code == 403


async def test_parts_out_of_range_or_of_the_wrong_size_refuse_the_batch(
    app: FastAPI, client: httpx.AsyncClient, clinician: Account
) -> None:
    upload_id, files = await start(client, clinician, 2)
    out = await put_batch(
        client, clinician, upload_id, batch_body([(0, 0, files[0]), (2, 0, files[1])])
    )
    assert out.status_code == 404
    assert error_code(out) == "chunk_out_of_range"
    chunk = await put_batch(client, clinician, upload_id, batch_body([(0, 1, files[0])]))
    assert chunk.status_code == 404
    assert error_code(chunk) == "chunk_out_of_range"
    size = await put_batch(client, clinician, upload_id, batch_body([(0, 0, files[0][:-1])]))
    assert size.status_code == 400
    assert error_code(size) == "chunk_size_mismatch"
    assert await recorded(app, upload_id) == {}  # nothing of a refused batch is kept


async def test_malformed_batches_are_400_invalid_chunk_batch(
    client: httpx.AsyncClient, clinician: Account
) -> None:
    upload_id, files = await start(client, clinician, 2)
    good = batch_body([(0, 0, files[0])])
    bodies = {
        "empty": b"",
        "short prefix": b"\0\0",
        "header length past the body": struct.pack(">I", 1 << 20) + b"{}",
        "header not JSON": struct.pack(">I", 3) + b"abc" + files[0],
        "no parts": struct.pack(">I", 12) + b'{"parts":[]}',
        "a byte missing": good[:-1],
        "a byte too many": good + b"\0",
        "duplicate part": batch_body([(0, 0, files[0]), (0, 0, files[0])]),
        "bad sha256": batch_body([(0, 0, files[0])], digests={0: "Z" * 64}),
    }
    for name, body in bodies.items():
        response = await put_batch(client, clinician, upload_id, body)
        assert response.status_code == 400, (name, response.text)
        assert error_code(response) == "invalid_chunk_batch", name


async def test_no_content_length_is_411(client: httpx.AsyncClient, clinician: Account) -> None:
    upload_id, files = await start(client, clinician, 1)
    body = batch_body([(0, 0, files[0])])

    async def stream() -> AsyncIterator[bytes]:
        yield body

    response = await client.post(
        batch_url(upload_id),
        content=stream(),
        headers=clinician.headers,
    )
    assert response.status_code == 411
    assert error_code(response) == "content_length_required"


async def test_a_cancelled_upload_takes_no_batch(
    client: httpx.AsyncClient, clinician: Account
) -> None:
    upload_id, files = await start(client, clinician, 2)
    cancelled = await client.delete(f"{API}/uploads/{upload_id}", headers=clinician.headers)
    assert cancelled.status_code == 200, cancelled.text
    response = await put_batch(client, clinician, upload_id, batch_body([(0, 0, files[0])]))
    assert response.status_code == 409
    assert error_code(response) == "upload_not_writable"
