"""Models and migrations agree (alembic check) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from relaypacs import migrate


class TestMigrations:
    async def test_alembic_check_passes_after_upgrade(self, database_url: str) -> None:
        await asyncio.to_thread(migrate.upgrade, database_url)
        await asyncio.to_thread(migrate.check, database_url)

    async def test_downgrade_and_upgrade_again(self, tmp_path: object) -> None:
        from pathlib import Path

        assert isinstance(tmp_path, Path)
        url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
        await asyncio.to_thread(migrate.downgrade, url, "base")
        await asyncio.to_thread(migrate.upgrade, url)
        await asyncio.to_thread(migrate.check, url)
