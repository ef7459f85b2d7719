"""The HTTP surface: security headers, no-store, CORS, header and body limits and generic
500s."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.auth.policy import POLICY, PUBLIC, app_policy, check_policy
from relaypacs.middleware import HSTS, MAX_HEADER_BYTES, MAX_HEADER_FIELDS
from tests.api.conftest import Account
from tests.gateway import run_gateway
from tests.security.test_policy import offline_app

API = "/api/v1"
ALLOWED = "https://pacs-app.example.org"


def client_for(app: FastAPI, base_url: str = "http://gw") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def assert_security_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert len(headers["x-request-id"]) == 16


class TestSecurityHeaders:
    async def test_on_success_and_on_every_kind_of_error(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        responses = [
            await client.get(f"{API}/health"),
            await client.get(f"{API}/uploads"),  # 401
            await client.get(f"{API}/admin/uploads", headers=clinician.headers),  # 403
            await client.get(
                f"{API}/uploads/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=clinician.headers
            ),  # 404
            await client.post(f"{API}/auth/login", json={}),  # 422
            await client.get(f"{API}/nowhere"),  # 404 of the router
            await client.get(f"{API}/uploads", headers=clinician.headers),
        ]
        assert [r.status_code for r in responses] == [200, 401, 403, 404, 422, 404, 200]
        for response in responses:
            assert_security_headers(response)
            assert "strict-transport-security" not in response.headers

    async def test_the_api_documentation_is_off_by_default(self, tmp_path: Path) -> None:
        async with client_for(offline_app(tmp_path)) as client:
            docs = await client.get(f"{API}/docs")
            document = await client.get(f"{API}/openapi.json")
            script = await client.get(f"{API}/docs/assets/swagger-ui-bundle.js")
        assert [docs.status_code, document.status_code, script.status_code] == [404, 404, 404]

    async def test_the_api_documentation_needs_no_cdn_and_no_unsafe_inline(
        self, tmp_path: Path
    ) -> None:
        async with client_for(offline_app(tmp_path, api_docs=True)) as client:
            docs = await client.get(f"{API}/docs")
            document = await client.get(f"{API}/openapi.json")
            script = await client.get(f"{API}/docs/assets/swagger-ui-bundle.js")
            style = await client.get(f"{API}/docs/assets/swagger-ui.css")
        assert docs.status_code == 200
        assert document.json()["info"]["title"] == "RelayPACS Gateway"
        assert script.status_code == style.status_code == 200
        assert len(script.content) > 100_000  # the real Swagger UI, from this server
        csp = docs.headers["content-security-policy"]
        assert "http" not in csp  # no other origin at all
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        # The page's only inline script is the one its policy names by hash.
        inline = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.S)
        assert len(inline) == 1
        digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
        assert f"{API}/docs/assets/swagger-ui-bundle.js" in docs.text
        assert "cdn" not in docs.text.lower()

    async def test_hsts_only_over_https(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path)
        async with client_for(app, "https://gw") as client:
            secure = await client.get(f"{API}/health")
        async with client_for(app) as client:
            plain = await client.get(f"{API}/health")
            spoofed = await client.get(f"{API}/health", headers={"X-Forwarded-Proto": "https"})
        assert secure.headers["strict-transport-security"] == HSTS.decode()
        assert "strict-transport-security" not in plain.headers
        # X-Forwarded-Proto from a peer that is not a configured proxy is not believed.
        assert "strict-transport-security" not in spoofed.headers

    async def test_hsts_behind_a_trusted_proxy(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path, trusted_proxies=["127.0.0.1"])  # ASGITransport's peer
        async with client_for(app) as client:
            proxied = await client.get(f"{API}/health", headers={"X-Forwarded-Proto": "https"})
            plain = await client.get(f"{API}/health", headers={"X-Forwarded-Proto": "http"})
        assert proxied.headers["strict-transport-security"] == HSTS.decode()
        assert "strict-transport-security" not in plain.headers


class TestCors:
    async def test_closed_by_default(self, tmp_path: Path) -> None:
        async with client_for(offline_app(tmp_path)) as client:
            preflight = await client.options(
                f"{API}/uploads",
                headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"},
            )
            simple = await client.get(f"{API}/health", headers={"Origin": ALLOWED})
        for response in (preflight, simple):
            assert not [h for h in response.headers if h.startswith("access-control-")]

    async def test_allowlist_from_the_configuration(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path, cors_origins=[ALLOWED])
        preflight_headers = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with client_for(app) as client:
            allowed = await client.options(
                f"{API}/uploads", headers={"Origin": ALLOWED, **preflight_headers}
            )
            refused = await client.options(
                f"{API}/uploads", headers={"Origin": "https://evil.example", **preflight_headers}
            )
            simple_allowed = await client.get(f"{API}/health", headers={"Origin": ALLOWED})
            simple_refused = await client.get(
                f"{API}/health", headers={"Origin": "https://evil.example"}
            )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert simple_allowed.headers["access-control-allow-origin"] == ALLOWED
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "cors_origin_not_allowed"
        for response in (refused, simple_refused):
            assert not [h for h in response.headers if h.startswith("access-control-")]
            assert_security_headers(response)

    def test_an_origin_must_be_an_origin(self, tmp_path: Path) -> None:
        from relaypacs.config import ConfigError, load_settings

        for bad in ("*", "pacs.example.org", "https://pacs.example.org/app"):
            with pytest.raises(ConfigError, match="RELAYPACS_CORS_ORIGINS"):
                load_settings(data_dir=tmp_path, cors_origins=[bad])

    def test_a_comma_separated_list_from_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from relaypacs.config import load_settings

        monkeypatch.setenv("RELAYPACS_CORS_ORIGINS", f"{ALLOWED}, https://b.example.org")
        settings = load_settings(data_dir=tmp_path)
        assert settings.cors_origins == [ALLOWED, "https://b.example.org"]


def header_block(request: httpx.Request) -> tuple[int, int]:
    """The request's header block as the server gets it: bytes (names and values), fields."""
    raw = request.headers.raw
    return sum(len(name) + len(value) for name, value in raw), len(raw)


def health_with_header_bytes(client: httpx.AsyncClient, total: int) -> httpx.Request:
    """GET /health whose header block, the client's own headers included, is `total` bytes."""
    own, _ = header_block(client.build_request("GET", f"{API}/health"))
    name = "X-Filler"
    request = client.build_request(
        "GET", f"{API}/health", headers={name: "a" * (total - own - len(name))}
    )
    assert header_block(request)[0] == total
    return request


def health_with_header_fields(client: httpx.AsyncClient, fields: int) -> httpx.Request:
    """GET /health with `fields` header fields, the client's own included."""
    _, own = header_block(client.build_request("GET", f"{API}/health"))
    extra = [(f"X-Field-{i}", "v") for i in range(fields - own)]
    request = client.build_request("GET", f"{API}/health", headers=extra)
    assert header_block(request)[1] == fields
    return request


def assert_headers_refused(
    response: httpx.Response, limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    assert response.status_code == 431
    error = response.json()["error"]
    assert error == {
        "code": "request_header_fields_too_large",
        "message": error["message"],
        "details": {},
    }
    assert str(limit) in error["message"]
    assert_security_headers(response)
    assert response.headers["connection"] == "close"
    request_id = response.headers["x-request-id"]
    logged = [r.getMessage() for r in caplog.records if r.name == "relaypacs.access"]
    assert [line for line in logged if " 431 " in line and line.endswith(request_id)]


class TestHeaderLimit:
    async def test_header_bytes_up_to_the_cap_are_served(self, tmp_path: Path) -> None:
        async with client_for(offline_app(tmp_path)) as client:
            response = await client.send(health_with_header_bytes(client, MAX_HEADER_BYTES))
        assert response.status_code == 200
        assert_security_headers(response)

    @pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 1, 64 << 10, 1 << 20, 8 << 20])
    async def test_more_header_bytes_are_431(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int
    ) -> None:
        with caplog.at_level(logging.INFO, logger="relaypacs.access"):
            async with client_for(offline_app(tmp_path)) as client:
                response = await client.send(health_with_header_bytes(client, size))
        assert_headers_refused(response, MAX_HEADER_BYTES, caplog)

    async def test_header_fields_up_to_the_cap_are_served(self, tmp_path: Path) -> None:
        async with client_for(offline_app(tmp_path)) as client:
            response = await client.send(health_with_header_fields(client, MAX_HEADER_FIELDS))
        assert response.status_code == 200
        assert_security_headers(response)

    @pytest.mark.parametrize("fields", [MAX_HEADER_FIELDS + 1, 10_000])
    async def test_more_header_fields_are_431(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, fields: int
    ) -> None:
        with caplog.at_level(logging.INFO, logger="relaypacs.access"):
            async with client_for(offline_app(tmp_path)) as client:
                response = await client.send(health_with_header_fields(client, fields))
        assert_headers_refused(response, MAX_HEADER_FIELDS, caplog)

    def test_a_megabyte_of_headers_to_the_real_server_is_431_and_it_keeps_serving(
        self, tmp_path: Path
    ) -> None:
        """uvicorn's httptools parser takes any header block whole (it has no limit), so the
        app sees it and refuses it; the server closes that connection and serves the next."""
        # 1 MiB in 32 fields: over the byte cap only.
        block = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * (32 << 10)) for i in range(32))
        with run_gateway(tmp_path / "data") as base:
            host, port = base.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: gw\r\n" + block + b"\r\n")
                answer = b""
                while chunk := sock.recv(64 << 10):  # until the server closes the connection
                    answer += chunk
            health = httpx.get(f"{base}/api/v1/health", timeout=30)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        assert lines[0].startswith(b"http/1.1 431 ")
        assert b"connection: close" in lines
        assert b"x-content-type-options: nosniff" in lines
        assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
        assert health.status_code == 200


class TestBodyLimit:
    async def test_a_large_json_body_is_413_before_it_is_read(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path, max_request_body=4096)
        async with client_for(app) as client:
            response = await client.post(
                f"{API}/auth/login",
                content=b'{"username": "' + b"a" * 5000 + b'", "password": "x"}',
                headers={"Content-Type": "application/json"},
            )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert_security_headers(response)

    async def test_a_chunked_body_is_cut_off_at_the_cap(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path, max_request_body=4096)

        async def body() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1024

        async with client_for(app) as client:
            response = await client.post(
                f"{API}/auth/login", content=body(), headers={"Content-Type": "application/json"}
            )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"

    async def test_the_chunk_route_keeps_its_own_limit(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path, max_request_body=4096)
        index = app_policy(app)
        chunk = f"{API}/uploads/6f1c2d1e-0000-4000-8000-000000000000/files/0/chunks/3"
        assert index.body_limit("PUT", chunk) == "own"
        assert index.body_limit("POST", f"{API}/uploads") == "manifest"
        assert index.body_limit("POST", f"{API}/auth/login") == "default"
        # Anonymous: the body is not refused by the cap but by the missing token.
        async with client_for(app) as client:
            response = await client.put(chunk, content=b"x" * 10_000)
        assert response.status_code == 401

    async def test_a_manifest_may_list_as_many_files_as_the_settings_allow(
        self, client: httpx.AsyncClient, clinician: Account
    ) -> None:
        # 4,500 files with 250-character names: a 1.6 MiB manifest, over the 1 MiB default.
        files = [
            {"name": f"{i:08d}" + "n" * 242, "size": 1000, "sha256": f"{i:064x}"}
            for i in range(4500)
        ]
        manifest = {"study_instance_uid": "2.25.123456789", "files": files}
        response = await client.post(f"{API}/uploads", json=manifest, headers=clinician.headers)
        assert len(response.request.content) > 1.5 * 1024 * 1024
        assert response.status_code == 201, response.text
        assert response.json()["file_count"] == 4500
        cancel = await client.delete(
            f"{API}/uploads/{response.json()['id']}", headers=clinician.headers
        )
        assert cancel.status_code == 200

    async def test_a_manifest_over_its_own_limit_is_413(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path, max_files_per_upload=10)
        async with client_for(app) as client:
            response = await client.post(
                f"{API}/uploads",
                content=b"[" + b" " * (2 * 1024 * 1024) + b"]",
                headers={"Content-Type": "application/json"},
            )
        assert response.status_code == 413
        assert "1048576 bytes" in response.json()["error"]["message"]


class TestInternalErrors:
    async def test_a_500_is_generic_json_with_a_request_id(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = offline_app(tmp_path)

        @app.get(f"{API}/boom")
        async def boom() -> None:
            raise RuntimeError("cannot open /srv/relaypacs/data/DOE^JANE/19450203.dcm")

        monkeypatch.setitem(POLICY, f"GET {API}/boom", PUBLIC)
        check_policy(app)
        with caplog.at_level(logging.INFO):
            async with client_for(app) as client:
                response = await client.get(f"{API}/boom")
        assert response.status_code == 500
        request_id = response.headers["x-request-id"]
        assert response.json() == {
            "error": {
                "code": "internal_error",
                "message": "An unexpected error occurred; it has been logged.",
                "details": {},
                "request_id": request_id,
            }
        }
        for leak in ("Traceback", "RuntimeError", "/srv", ".py", "DOE", "19450203"):
            assert leak not in response.text
        assert_security_headers(response)
        # The log says what and where, with the request id, never the message's data.
        logged = caplog.text
        assert "RuntimeError" in logged
        assert request_id in logged
        assert "DOE^JANE" not in logged
        assert "19450203" not in logged
        # A failed request has its access line like any other.
        access = [r.getMessage() for r in caplog.records if r.name == "relaypacs.access"]
        assert len(access) == 1
        assert f'"GET {API}/boom" 500' in access[0]
        assert request_id in access[0]
