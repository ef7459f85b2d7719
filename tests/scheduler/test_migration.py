"""Migration 0010 on a database that holds uploads: the status constraint is widened in place
(SQLite: no rebuild of `upload`, which would cascade into its files and chunks), so every
upload, file and chunk is still there, `expired` is taken, an unknown status still refused;
downgrading turns expired uploads into cancelled ones."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from relaypacs import migrate

UPLOAD = uuid.UUID("12345678-1234-5678-1234-567812345678")
USER = uuid.UUID("87654321-4321-8765-4321-876543218765")


def _sync_url(url: str) -> str:
    return url.replace("sqlite+aiosqlite", "sqlite")


def _fill(table: sa.Table, **given: object) -> dict[str, object]:
    """A row of `table` with every required column: the given values, else a plain one."""
    row: dict[str, object] = dict(given)
    for column in table.columns:
        if column.name in row or column.nullable or column.server_default is not None:
            continue
        kind = column.type
        if isinstance(kind, sa.Boolean):
            row[column.name] = False
        elif isinstance(kind, sa.Integer):
            row[column.name] = 1
        elif isinstance(kind, sa.DateTime):
            row[column.name] = dt.datetime(2026, 12, 1, 10)  # noqa: DTZ001 - SQLite's naive UTC
        elif isinstance(kind, sa.JSON):
            row[column.name] = {}
        else:
            row[column.name] = "x"
    return row


def _seed(url: str) -> None:
    engine = sa.create_engine(_sync_url(url))
    meta = sa.MetaData()
    meta.reflect(engine, only=["user", "upload", "upload_file", "upload_chunk"])
    user, upload, upload_file, chunk = (
        meta.tables[n] for n in ("user", "upload", "upload_file", "upload_chunk")
    )
    with engine.begin() as connection:
        connection.execute(
            user.insert().values(_fill(user, id=USER.hex, username="u", role="clinician"))
        )
        connection.execute(
            upload.insert().values(_fill(upload, id=UPLOAD.hex, user_id=USER.hex, status="pending"))
        )
        for index in range(3):
            connection.execute(
                upload_file.insert().values(
                    _fill(upload_file, upload_id=UPLOAD.hex, index=index, status="valid")
                )
            )
            connection.execute(
                chunk.insert().values(
                    _fill(chunk, upload_id=UPLOAD.hex, file_index=index, chunk_index=0)
                )
            )
    engine.dispose()


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one())


def test_sqlite_upgrade_keeps_every_upload_file_and_chunk(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url, "0009")
    _seed(url)
    migrate.upgrade(url)
    engine = sa.create_engine(_sync_url(url))
    try:
        assert (_count(engine, "upload"), _count(engine, "upload_file")) == (1, 3)
        assert _count(engine, "upload_chunk") == 3
        with engine.begin() as connection:
            connection.execute(sa.text("PRAGMA foreign_keys = ON"))
            connection.execute(sa.text("UPDATE upload SET status = 'expired'"))
            assert connection.execute(sa.text("PRAGMA integrity_check")).scalar_one() == "ok"
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(sa.text("UPDATE upload SET status = 'lost'"))
    finally:
        engine.dispose()
    migrate.downgrade(url, "0009")
    engine = sa.create_engine(_sync_url(url))
    try:
        with engine.connect() as connection:
            status = connection.execute(sa.text("SELECT status FROM upload")).scalar_one()
        assert status == "cancelled"
        assert _count(engine, "upload_file") == 3
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(sa.text("UPDATE upload SET status = 'expired'"))
    finally:
        engine.dispose()
    migrate.upgrade(url)
    migrate.check(url)
