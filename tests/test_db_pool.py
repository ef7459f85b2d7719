"""The PostgreSQL pool without a pre-ping per checkout: a connection in steady use is not
pinged; one that sat idle is, and a dead one is replaced before a request gets it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaypacs import db


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    made = db.create_engine(postgres_url)
    yield made
    await made.dispose()


def count_pings(engine: AsyncEngine) -> list[int]:
    pings = [0]
    dialect = engine.sync_engine.dialect
    real = dialect.do_ping

    def do_ping(dbapi_connection: Any) -> bool:
        pings[0] += 1
        return real(dbapi_connection)

    dialect.do_ping = do_ping  # type: ignore[method-assign]
    return pings


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_in_steady_use_is_not_pinged(engine: AsyncEngine) -> None:
    assert not engine.pool._pre_ping
    pings = count_pings(engine)
    for _ in range(20):
        await backend_pid(engine)
    assert pings[0] == 0


async def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(
    engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = count_pings(engine)
    first = await backend_pid(engine)
    # The server ends that connection while it sits in the pool (a restart, an idle timeout).
    other = db.create_engine(postgres_url)
    try:
        async with other.connect() as connection:
            ended = await connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": first}
            )
            assert ended.scalar_one() is True
    finally:
        await other.dispose()
    monkeypatch.setattr(db, "POOL_PING_IDLE_SECONDS", 0.0)  # "idle long enough", at once
    connects = [0]
    event.listen(engine.sync_engine, "connect", lambda *_: connects.__setitem__(0, connects[0] + 1))
    second = await backend_pid(engine)  # no error: the ping found it dead, the pool replaced it
    assert pings[0] >= 1
    assert connects[0] == 1
    assert second != first
