"""The gateway serves the built web app at / (relaypacs/webapp.py): assets cached for good,
index.html and the service worker never, the app's own routes get index.html, the API's
unknown paths stay the API's 404, and every answer keeps the security headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relaypacs.config import Settings
from relaypacs.main import create_app

INDEX = b"<!doctype html><title>RelayPACS</title><script type=module src=/assets/index-abc123.js>"


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    built = tmp_path / "dist"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_bytes(INDEX)
    (built / "assets" / "index-abc123.js").write_text("console.log(1)")
    (built / "sw.js").write_text("self.addEventListener('install', () => {})")
    (built / "manifest.webmanifest").write_text("{}")
    (built / "icon-192.png").write_bytes(b"\x89PNG")
    return built


@pytest.fixture
async def client(tmp_path: Path, web_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path / "data", secret_key="w" * 40, web_dir=web_dir)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


class TestServesTheApp:
    async def test_index_at_the_root_never_cached(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/")
        assert response.status_code == 200
        assert response.content == INDEX
        assert response.headers["cache-control"] == "no-store"
        csp = response.headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp

    async def test_hashed_assets_are_immutable(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/assets/index-abc123.js")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"

    async def test_service_worker_and_manifest_never_cached(
        self, client: httpx.AsyncClient
    ) -> None:
        for path in ("/sw.js", "/manifest.webmanifest"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["cache-control"] == "no-store", path

    async def test_other_files_are_revalidated(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/icon-192.png")
        assert response.headers["cache-control"] == "no-cache"

    async def test_an_app_route_gets_index_html(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/uploads")
        assert response.status_code == 200
        assert response.content == INDEX
        assert response.headers["cache-control"] == "no-store"

    async def test_a_missing_file_is_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/assets/gone-123.js")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"

    async def test_an_unknown_api_path_is_the_apis_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/nothing-here")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        assert response.headers["cache-control"] == "no-store"

    async def test_the_api_still_answers(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/auth/me")
        assert response.status_code == 401

    async def test_the_files_are_read_only(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/index.html", content=b"x")
        assert response.status_code == 405

    async def test_no_path_leaves_the_directory(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/..%2f..%2fetc%2fpasswd")
        assert b"root:" not in response.content


class TestWithoutABuild:
    def test_no_web_app_when_nothing_is_built(self, tmp_path: Path) -> None:
        settings = Settings(data_dir=tmp_path, secret_key="w" * 40, web_dir=tmp_path / "none")
        assert settings.resolved_web_dir is None
        app = create_app(settings)
        assert app.router.default is not None
        assert not hasattr(app.router.default, "directory")
