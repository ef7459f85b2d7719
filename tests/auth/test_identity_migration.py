"""Migration 0003 (identity) goes down and up again on PostgreSQL too, in a database of its
own (the shared test database keeps its schema)."""

from __future__ import annotations

import asyncio
import secrets

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from relaypacs import migrate
from tests.conftest import POSTGRES_ADMIN_URL, _psql


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


class TestIdentityMigration:
    async def test_down_to_0002_and_up_again_on_postgresql(self) -> None:
        name = f"relaypacs_mig_{secrets.token_hex(4)}"
        _psql(f'CREATE DATABASE "{name}"')
        try:
            host = POSTGRES_ADMIN_URL.removeprefix("postgresql://")
            url = f"postgresql+asyncpg://{host}/{name}"
            await asyncio.to_thread(migrate.upgrade, url)
            assert {"auth_session", "refresh_token", "recovery_code"} <= await _tables(url)
            await asyncio.to_thread(migrate.downgrade, url, "0002")
            assert not {"auth_session", "refresh_token", "recovery_code"} & await _tables(url)
            await asyncio.to_thread(migrate.upgrade, url)
            await asyncio.to_thread(migrate.check, url)
        finally:
            _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
