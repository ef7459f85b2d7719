"""record_alone's group commit: the records of concurrent callers share a transaction, every
caller returns only once its own record is stored, the chain stays one line (also with two
replicas appending at once), and a record that cannot be stored fails its own caller only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relaypacs.audit.models import Actor
from relaypacs.audit.repository import walk_log
from relaypacs.audit.service import record_alone
from relaypacs.db import create_engine, create_sessionmaker
from tests.security.test_audit_chain import empty_log


@pytest.fixture
async def engines(postgres_url: str, postgres_owner_url: str) -> AsyncIterator[list[AsyncEngine]]:
    owner = create_engine(postgres_owner_url)
    try:
        await empty_log(owner)
    finally:
        await owner.dispose()
    made = [create_engine(postgres_url), create_engine(postgres_url)]  # two replicas
    yield made
    for engine in made:
        await engine.dispose()


async def records(engine: AsyncEngine, action: str) -> list[tuple[str, int]]:
    """(the inserting transaction, details.i) of each record of `action`, in chain order."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT xmin::text, (details->>'i')::int FROM audit_event "
                "WHERE action = :action ORDER BY id"
            ),
            {"action": action},
        )
        return [(str(x), int(i)) for x, i in rows]


async def test_concurrent_records_share_transactions_and_stay_one_chain(
    engines: list[AsyncEngine],
) -> None:
    first, second = (create_sessionmaker(e) for e in engines)
    stored: list[int] = []

    async def one(sessionmaker: async_sessionmaker[AsyncSession], i: int) -> None:
        await record_alone(
            sessionmaker,
            actor=Actor(role="clinician", client_ip="10.0.0.1"),
            action="test.group",
            details={"i": i},
        )
        # Returned: the record is in the database, seen by another connection.
        assert i in [n for _, n in await records(engines[1], "test.group")]
        stored.append(i)

    await asyncio.gather(*(one(first if i % 2 else second, i) for i in range(60)))
    assert sorted(stored) == list(range(60))
    found = await records(engines[0], "test.group")
    assert sorted(i for _, i in found) == list(range(60))
    # Grouped: fewer transactions than records (60 callers at once on two replicas).
    assert len({xid for xid, _ in found}) < 60
    async with engines[0].connect() as connection:
        report = await walk_log(connection)
    assert report.intact, report
    assert report.records == 60


async def test_a_record_that_cannot_be_stored_fails_its_caller_only(
    engines: list[AsyncEngine],
) -> None:
    sessionmaker = create_sessionmaker(engines[0])
    too_long = "x" * 40  # object_type is VARCHAR(32): PostgreSQL refuses the row

    async def one(i: int) -> None:
        await record_alone(
            sessionmaker,
            actor=Actor(),
            action="test.group",
            object_type=too_long if i == 3 else "upload",
            details={"i": i},
        )

    results = await asyncio.gather(*(one(i) for i in range(8)), return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == [3]
    found = await records(engines[0], "test.group")
    assert sorted(i for _, i in found) == [0, 1, 2, 4, 5, 6, 7]
    async with engines[0].connect() as connection:
        report = await walk_log(connection)
    assert report.intact, report
