"""The group commit of chunk rows on SQLite runs its statements on the driver's connection
(SqliteChunkRowWriter) instead of through SQLAlchemy (record_chunk_rows, used on PostgreSQL).
Both must say the same of every chunk and store the same rows."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, select, text, update

from relaypacs import migrate
from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.main import create_app
from relaypacs.state import app_state
from relaypacs.uploads.chunks import ChunkOutcome, outcomes
from relaypacs.uploads.models import Upload, UploadChunk, UploadFile, UploadStatus
from relaypacs.uploads.repository.chunk_rows import (
    ChunkRow,
    RecordedBatch,
    SqliteChunkRowWriter,
    record_chunk_rows,
)
from tests.api.conftest import PASSWORD
from tests.api.uploading import make_study


@pytest.fixture
async def sqlite_app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        secret_key="test-signing-key-" + "x" * 32,
        totp_required_roles=[],
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def new_upload(app: FastAPI, files: int = 3) -> uuid.UUID:
    """An upload of `files` one-chunk files, straight in the database."""
    study = make_study(files)
    async with app_state(app).db.sessionmaker() as session, session.begin():
        user = await create_user(
            session, username=f"u{uuid.uuid4().hex[:8]}", password=PASSWORD, role=Role.CLINICIAN
        )
        manifest = study.manifest()
        upload = Upload(
            user_id=user.id,
            study_instance_uid=manifest["study_instance_uid"],
            study_hash=uuid.uuid4().hex * 2,
            chunk_size=1 << 20,
            file_count=files,
            total_bytes=sum(f["size"] for f in manifest["files"]),
        )
        session.add(upload)
        await session.flush()
        session.add_all(
            UploadFile(
                upload_id=upload.id,
                index=index,
                name=entry["name"],
                size=entry["size"],
                sha256=entry["sha256"],
                chunk_count=1,
            )
            for index, entry in enumerate(manifest["files"])
        )
        return upload.id


def record(upload_id: uuid.UUID, file_index: int, sha256: str, md5: str | None = None) -> ChunkRow:
    return ChunkRow(upload_id, file_index, 0, 10, sha256, md5)


def sync_engine(app: FastAPI) -> Engine:
    engine = app_state(app).db.sync_engine
    assert engine is not None, "SQLite only"
    return engine


def run_core(app: FastAPI, batch: list[ChunkRow]) -> list[ChunkOutcome]:
    with sync_engine(app).begin() as connection:
        return outcomes(batch, record_chunk_rows(connection, batch))


def run_driver(app: FastAPI, batch: list[ChunkRow]) -> list[ChunkOutcome]:
    return outcomes(batch, SqliteChunkRowWriter(sync_engine(app)).record(batch))


SCENARIO = [
    # (batch as (file, sha256) pairs, expected outcomes)
    ([(0, "a" * 64), (1, "b" * 64)], [ChunkOutcome.STORED, ChunkOutcome.STORED]),
    ([(0, "a" * 64), (1, "c" * 64)], [ChunkOutcome.ALREADY_STORED, ChunkOutcome.CONFLICT]),
    (
        [(2, "d" * 64), (2, "d" * 64), (2, "e" * 64)],
        [ChunkOutcome.STORED, ChunkOutcome.ALREADY_STORED, ChunkOutcome.CONFLICT],
    ),
]


Runner = Callable[[FastAPI, list[ChunkRow]], list[ChunkOutcome]]


@pytest.mark.parametrize("run", [run_core, run_driver], ids=["core", "driver"])
async def test_outcomes(sqlite_app: FastAPI, run: Runner) -> None:
    upload_id = await new_upload(sqlite_app)
    for pairs, expected in SCENARIO:
        batch = [record(upload_id, f, sha256) for f, sha256 in pairs]
        assert run(sqlite_app, batch) == expected
    await set_status(sqlite_app, upload_id, UploadStatus.CANCELLED)
    assert run(sqlite_app, [record(upload_id, 0, "a" * 64)]) == [ChunkOutcome.CANCELLED]
    await set_status(sqlite_app, upload_id, UploadStatus.RECEIVED)
    assert run(sqlite_app, [record(upload_id, 0, "a" * 64)]) == [ChunkOutcome.NOT_WRITABLE]
    missing = record(uuid.uuid4(), 0, "a" * 64)
    assert run(sqlite_app, [missing]) == [ChunkOutcome.NOT_WRITABLE]


@pytest.mark.parametrize("run", [run_core, run_driver], ids=["core", "driver"])
async def test_rows_from_before_sha256_are_compared_by_md5(
    sqlite_app: FastAPI, run: Runner
) -> None:
    """A row written before migration 0004 has an MD5 and no SHA-256: the same chunk again
    (same MD5, whatever its SHA-256 says) is already stored, under the row's own key; other
    bytes are a conflict."""
    upload_id = await new_upload(sqlite_app)
    async with app_state(sqlite_app).db.sessionmaker() as session, session.begin():
        for file_index, md5 in ((0, "a" * 32), (1, "b" * 32)):
            session.add(
                UploadChunk(
                    upload_id=upload_id, file_index=file_index, chunk_index=0, size=10, md5=md5
                )
            )
    batch = [record(upload_id, 0, "f" * 64, "a" * 32), record(upload_id, 1, "f" * 64, "c" * 32)]
    assert run(sqlite_app, batch) == [ChunkOutcome.ALREADY_STORED_LEGACY, ChunkOutcome.CONFLICT]
    assert run(sqlite_app, [record(upload_id, 1, "f" * 64)]) == [ChunkOutcome.CONFLICT]


async def set_status(app: FastAPI, upload_id: uuid.UUID, status: UploadStatus) -> None:
    async with app_state(app).db.sessionmaker() as session, session.begin():
        await session.execute(update(Upload).where(Upload.id == upload_id).values(status=status))


async def test_both_store_the_same_rows(sqlite_app: FastAPI) -> None:
    by_core, by_driver = await new_upload(sqlite_app), await new_upload(sqlite_app)
    run_core(sqlite_app, [record(by_core, 0, "f" * 64, "1" * 32), record(by_core, 1, "0" * 64)])
    run_driver(
        sqlite_app, [record(by_driver, 0, "f" * 64, "1" * 32), record(by_driver, 1, "0" * 64)]
    )
    raw = {}
    async with app_state(sqlite_app).db.sessionmaker() as session, session.begin():
        for upload_id in (by_core, by_driver):
            rows = await session.execute(
                text(
                    "SELECT upload_id, typeof(upload_id), file_index, chunk_index, size, sha256, "
                    "md5, typeof(created_at), length(created_at) FROM upload_chunk "
                    "WHERE upload_id = :u ORDER BY file_index"
                ),
                {"u": upload_id.hex},
            )
            raw[upload_id] = [tuple(r) for r in rows]
        loaded = (await session.scalars(select(UploadChunk).order_by(UploadChunk.upload_id))).all()
    assert len(raw[by_core]) == len(raw[by_driver]) == 2
    assert [r[1:] for r in raw[by_core]] == [r[1:] for r in raw[by_driver]]
    assert [r[0] for r in raw[by_driver]] == [by_driver.hex] * 2
    assert len(loaded) == 4
    assert all(c.created_at.tzinfo is not None for c in loaded)
    newest = max(c.created_at for c in loaded)
    assert all(abs((newest - c.created_at).total_seconds()) < 60 for c in loaded)


async def test_a_failure_after_the_transaction_ended_keeps_its_own_error(
    sqlite_app: FastAPI,
) -> None:
    """If the transaction is already over when the batch fails (a failed COMMIT ends it), the
    ROLLBACK that follows fails too; the batch's own error is the one raised, and the next
    batch is recorded normally."""
    upload_id = await new_upload(sqlite_app)

    class Failing(SqliteChunkRowWriter):
        def _record(self, cursor: Any, batch: list[ChunkRow]) -> RecordedBatch:
            cursor.execute("COMMIT")
            raise ValueError("the batch's own error")

    with pytest.raises(ValueError, match="the batch's own error"):
        Failing(sync_engine(sqlite_app)).record([record(upload_id, 0, "a" * 64)])
    assert run_driver(sqlite_app, [record(upload_id, 0, "a" * 64)]) == [ChunkOutcome.STORED]


async def test_migration_0004_keeps_md5_rows_and_its_downgrade_drops_sha256_rows(
    tmp_path: Path,
) -> None:
    """Upgrading keeps a chunk row of the old schema (MD5 only) as it was, with no SHA-256:
    the gateway names and compares it by MD5. Downgrading drops the rows named by SHA-256
    (the old schema cannot name their objects) and keeps the others."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    settings = Settings(
        data_dir=tmp_path,
        database_url=url,
        secret_key="test-signing-key-" + "x" * 32,
        totp_required_roles=[],
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        upload_id = await new_upload(app)
        run_driver(app, [record(upload_id, 1, "b" * 64), record(upload_id, 2, "c" * 64, "c" * 32)])
    await asyncio.to_thread(migrate.downgrade, url, "0003")
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        assert db.execute("SELECT file_index, md5 FROM upload_chunk").fetchall() == []
        db.execute(
            "INSERT INTO upload_chunk (upload_id, file_index, chunk_index, size, md5, created_at)"
            " VALUES (?, 0, 0, 10, ?, '2026-12-01 00:00:00.000000')",
            (upload_id.hex, "a" * 32),
        )
    await asyncio.to_thread(migrate.upgrade, url)
    await asyncio.to_thread(migrate.check, url)
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        rows = db.execute("SELECT file_index, sha256, md5 FROM upload_chunk").fetchall()
    assert rows == [(0, None, "a" * 32)]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        # compared by its MD5 after the upgrade
        batch = [record(upload_id, 0, "f" * 64, "a" * 32)]
        assert run_driver(app, batch) == [ChunkOutcome.ALREADY_STORED_LEGACY]
