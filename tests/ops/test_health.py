"""Liveness and readiness: each dependency checked, each within its timeout."""

from __future__ import annotations

import time
from pathlib import Path

from tests.ops.conftest import client_of, closed_port, ops_settings, silent_server, started


class TestLiveness:
    async def test_alive_without_asking_any_dependency(self, tmp_path: Path) -> None:
        async with started(ops_settings(tmp_path)) as app, client_of(app) as client:
            response = await client.get("/health/live")
        assert response.status_code == 200
        assert response.json()["status"] == "alive"
        assert response.headers["cache-control"] == "no-store"


class TestReadiness:
    async def test_ready_when_database_and_storage_answer(self, tmp_path: Path) -> None:
        async with started(ops_settings(tmp_path)) as app, client_of(app) as client:
            response = await client.get("/health/ready")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ready"
        assert set(body["checks"]) == {"database", "storage"}
        assert all(check["ok"] and check["required"] for check in body["checks"].values())

    async def test_redis_and_pacs_down_degrade_but_keep_the_replica_in(
        self, tmp_path: Path
    ) -> None:
        settings = ops_settings(
            tmp_path,
            redis_url=f"redis://127.0.0.1:{closed_port()}/0",
            pacs_url=f"http://127.0.0.1:{closed_port()}/dicom-web",
        )
        async with started(settings) as app, client_of(app) as client:
            response = await client.get("/health/ready")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "degraded"
        checks = body["checks"]
        assert checks["database"]["ok"]
        assert checks["storage"]["ok"]
        assert not checks["redis"]["ok"]
        assert not checks["redis"]["required"]
        assert checks["redis"]["error"]
        assert not checks["pacs:pacs"]["ok"]
        assert not checks["pacs:pacs"]["required"]
        assert checks["pacs:pacs"]["error"] == "ConnectError"

    async def test_a_hung_pacs_does_not_hold_the_answer(self, tmp_path: Path) -> None:
        with silent_server() as port:
            settings = ops_settings(tmp_path, pacs_url=f"http://127.0.0.1:{port}/dicom-web")
            async with started(settings) as app, client_of(app) as client:
                began = time.monotonic()
                response = await client.get("/health/ready")
                took = time.monotonic() - began
        assert response.status_code == 200
        assert took < 1.0
        pacs = response.json()["checks"]["pacs:pacs"]
        assert pacs["error"] == "no answer within 0.8 s"

    async def test_storage_gone_makes_the_replica_unready(self, tmp_path: Path) -> None:
        import shutil

        settings = ops_settings(tmp_path)
        async with started(settings) as app, client_of(app) as client:
            shutil.rmtree(settings.storage_root)
            response = await client.get("/health/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unready"
        assert not body["checks"]["storage"]["ok"]
        assert body["checks"]["database"]["ok"]
