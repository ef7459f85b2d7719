"""The audit log's hash chain: `relaypacs audit verify` finds an edited, a deleted, a replaced
and a truncated record, each written past the database's own guards (as an attacker with the
database owner's rights or the SQLite file would), and concurrent appends stay one chain."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from relaypacs import migrate
from relaypacs.audit.chain import ChainReport
from relaypacs.audit.models import Actor
from relaypacs.audit.repository import walk_log
from relaypacs.audit.service import log_chain_head, record_alone, record_event
from relaypacs.db import create_engine, create_sessionmaker
from tests.gateway import relaypacs_command

# Per database: how the owner removes the guards for the test's tampering.
UNGUARD = {
    "sqlite": [
        "DROP TRIGGER audit_event_no_update",
        "DROP TRIGGER audit_event_no_delete",
        "DROP TRIGGER audit_event_no_replace",
    ],
    "postgresql": ["ALTER TABLE audit_event DISABLE TRIGGER USER"],
}


@pytest.fixture(params=["sqlite", "postgresql"])
async def log(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A database with ten chained records, and its owner's engine."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
    else:
        url = request.getfixturevalue("postgres_owner_url")
    engine = create_engine(url)
    sessionmaker = create_sessionmaker(engine)
    if request.param == "postgresql":
        await empty_log(engine)
    for i in range(10):
        async with sessionmaker() as session, session.begin():
            await record_event(
                session,
                actor=Actor(role="admin", client_ip="10.0.0.1"),
                action="test.chain",
                object_type="upload",
                object_id=f"u{i}",
                details={"n": i, "nested": {"b": [1, 2], "a": "x"}},
            )
    try:
        yield request.param, engine
    finally:
        if request.param == "postgresql":
            async with engine.begin() as connection:
                await connection.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))
        await engine.dispose()


async def empty_log(owner: AsyncEngine) -> None:
    """The shared PostgreSQL database: start from an empty log (the tests here tamper with it)."""
    async with owner.begin() as connection:
        await connection.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        await connection.execute(text("DELETE FROM audit_event"))
        await connection.execute(text("ALTER TABLE audit_event ENABLE TRIGGER USER"))


async def verify(engine: AsyncEngine, head: tuple[int, str] | None = None) -> ChainReport:
    async with engine.connect() as connection:
        return await walk_log(connection, expected_head=head, page=3)  # pages cross records


async def ids(engine: AsyncEngine) -> list[tuple[int, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT id, hash FROM audit_event ORDER BY id"))
        return [(int(i), str(h)) for i, h in rows]


async def tamper(kind: str, engine: AsyncEngine, *statements: str) -> None:
    async with engine.begin() as connection:
        for statement in [*UNGUARD[kind], *statements]:
            await connection.execute(text(statement))


class TestVerify:
    async def test_an_untouched_log_is_intact(self, log: tuple[str, AsyncEngine]) -> None:
        _, engine = log
        records = await ids(engine)
        report = await verify(engine, head=records[-1])
        assert report.intact
        assert (report.records, report.head_id, report.head_hash) == (10, *records[-1])

    async def test_an_edited_record_is_named(self, log: tuple[str, AsyncEngine]) -> None:
        kind, engine = log
        records = await ids(engine)
        target = records[4][0]
        await tamper(kind, engine, f"UPDATE audit_event SET outcome = 'denied' WHERE id = {target}")
        report = await verify(engine)
        assert (report.broken_at, report.reason) == (target, "its content was changed")

    async def test_a_deleted_record_breaks_the_next_link(
        self, log: tuple[str, AsyncEngine]
    ) -> None:
        kind, engine = log
        records = await ids(engine)
        await tamper(kind, engine, f"DELETE FROM audit_event WHERE id = {records[3][0]}")
        report = await verify(engine)
        assert report.broken_at == records[4][0]
        assert report.reason == "a record before it is missing or was changed"

    async def test_a_replaced_record_is_named(self, log: tuple[str, AsyncEngine]) -> None:
        kind, engine = log
        records = await ids(engine)
        target = records[6][0]
        if kind == "sqlite":  # INSERT OR REPLACE: the old row goes, a forged one takes its id
            forge = (
                "INSERT OR REPLACE INTO audit_event "
                "(id, at, action, outcome, details, prev_hash, hash) "
                "SELECT id, at, 'forged', outcome, details, prev_hash, hash "
                f"FROM audit_event WHERE id = {target}"
            )
        else:
            forge = f"UPDATE audit_event SET action = 'forged' WHERE id = {target}"
        await tamper(kind, engine, forge)
        report = await verify(engine)
        assert (report.broken_at, report.reason) == (target, "its content was changed")

    async def test_a_truncated_tail_shows_against_a_head_noted_earlier(
        self, log: tuple[str, AsyncEngine]
    ) -> None:
        kind, engine = log
        records = await ids(engine)
        noted = records[-1]
        await tamper(kind, engine, f"DELETE FROM audit_event WHERE id >= {records[7][0]}")
        assert (await verify(engine)).intact  # what is left is a chain...
        report = await verify(engine, head=noted)  # ...that stops short of the noted head
        assert report.broken_at == noted[0]
        assert report.reason is not None
        assert "truncated" in report.reason

    async def test_a_removed_beginning_is_found(self, log: tuple[str, AsyncEngine]) -> None:
        kind, engine = log
        records = await ids(engine)
        await tamper(kind, engine, f"DELETE FROM audit_event WHERE id <= {records[1][0]}")
        report = await verify(engine)
        assert report.broken_at == records[2][0]


async def test_concurrent_appends_stay_one_chain(
    postgres_url: str, postgres_owner_url: str
) -> None:
    """As the gateway's own role, 40 transactions append at once: one line, no fork."""
    owner = create_engine(postgres_owner_url)
    try:
        await empty_log(owner)
    finally:
        await owner.dispose()
    engine = create_engine(postgres_url)
    sessionmaker: async_sessionmaker = create_sessionmaker(engine)  # type: ignore[type-arg]
    try:
        await asyncio.gather(
            *(
                record_alone(
                    sessionmaker, actor=Actor(), action="test.concurrent", details={"i": i}
                )
                for i in range(40)
            )
        )
        async with engine.connect() as connection:
            report = await walk_log(connection)
        assert report.intact, report
        assert report.records == 40
    finally:
        await engine.dispose()


async def test_the_head_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    try:
        await record_alone(create_sessionmaker(engine), actor=Actor(), action="test.head")
        with caplog.at_level("INFO", logger="relaypacs.audit.chain"):
            await log_chain_head(create_sessionmaker(engine, readonly=True))
        ((record_id, digest),) = await ids(engine)
        assert f"audit chain head {record_id}:{digest}" in caplog.text
    finally:
        await engine.dispose()


def test_the_command_says_intact_or_broken(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    env = {**os.environ, "RELAYPACS_DATABASE_URL": url, "RELAYPACS_DATA_DIR": str(tmp_path)}
    command = [*relaypacs_command(), "audit", "verify"]

    async def prepare() -> tuple[int, str]:
        await asyncio.to_thread(migrate.upgrade, url)
        engine = create_engine(url)
        try:
            for _ in range(3):
                await record_alone(create_sessionmaker(engine), actor=Actor(), action="test.cli")
            head = (await ids(engine))[-1]
            await tamper("sqlite", engine, f"DELETE FROM audit_event WHERE id = {head[0]}")
            return head
        finally:
            await engine.dispose()

    head = asyncio.run(prepare())
    intact = subprocess.run(command, env=env, capture_output=True, text=True)
    assert intact.returncode == 0, intact.stderr
    assert "audit log intact: 2 records" in intact.stdout
    cut = subprocess.run(
        [*command, "--head", f"{head[0]}:{head[1]}"], env=env, capture_output=True, text=True
    )
    assert cut.returncode == 1
    assert f"BROKEN at record {head[0]}" in cut.stderr
    assert "truncated" in cut.stderr


async def test_records_from_before_the_chain_are_chained_by_the_upgrade(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0004")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for i in range(5):
                await connection.execute(
                    text(
                        "INSERT INTO audit_event (at, action, outcome, details) "
                        "VALUES (:at, 'old.record', 'success', :details)"
                    ),
                    {"at": f"2026-11-0{i + 1} 10:00:00.123456", "details": f'{{"n": {i}}}'},
                )
    finally:
        await engine.dispose()
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    try:
        await record_alone(create_sessionmaker(engine), actor=Actor(), action="new.record")
        report = await verify(engine)
        assert report.intact, report
        assert report.records == 6
    finally:
        await engine.dispose()
