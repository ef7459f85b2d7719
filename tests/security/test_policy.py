"""The policy table: every route has an entry, or the app is not built and does not start."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from relaypacs.auth.models import Role
from relaypacs.auth.policy import (
    POLICY,
    PUBLIC,
    PolicyError,
    PolicyIndex,
    allow,
    app_policy,
    check_policy,
)
from relaypacs.config import Settings
from relaypacs.main import create_app
from relaypacs.uploads.router import ChunkRoute, ReadRoute, _ChunkPath


def offline_app(tmp_path: Path, **settings: object) -> FastAPI:
    """The app, built but not started (no database): enough for routing and the policy."""
    return create_app(Settings(data_dir=tmp_path, secret_key="k" * 40, **settings))  # type: ignore[arg-type]


class TestEveryRouteHasAnEntry:
    def test_the_app_builds_with_an_entry_for_each_of_its_endpoints(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path, api_docs=True)  # every route there is
        index: PolicyIndex = app_policy(app)
        keys = {e.key for e in index.endpoints}
        assert keys == set(POLICY)
        # The enumeration sees the routers' routes with their prefixes, not a hand list.
        assert "PUT /api/v1/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}" in keys
        assert "GET /api/v1/admin/audit/export" in keys
        openapi_paths = {
            f"{method.upper()} {path}"
            for path, item in app.openapi()["paths"].items()
            for method in item
        }
        assert openapi_paths <= keys

    def test_a_route_without_an_entry_stops_the_app(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path)
        extra = APIRouter()

        @extra.get("/reports/{report_id}/share")
        async def share_report(report_id: str) -> dict[str, str]:
            return {"id": report_id}

        app.include_router(extra, prefix="/api/v1")
        with pytest.raises(PolicyError, match=r"GET /api/v1/reports/\{report_id\}/share"):
            check_policy(app)

    async def test_the_lifespan_refuses_to_start_with_an_unlisted_route(
        self, tmp_path: Path
    ) -> None:
        app = offline_app(tmp_path)

        @app.post("/api/v1/uploads/{upload_id}/share")
        async def share(upload_id: str) -> None:
            return None

        with pytest.raises(PolicyError, match="share"):
            async with app.router.lifespan_context(app):
                pass

    async def test_an_unchecked_route_is_refused_at_request_time(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path)

        @app.get("/api/v1/leak")
        async def leak() -> dict[str, str]:
            return {"secret": "yes"}

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.get("/api/v1/leak")
        assert response.status_code == 403
        assert "secret" not in response.text

    def test_a_stale_entry_is_refused_too(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path)
        policy = {**POLICY, "GET /api/v1/gone": PUBLIC}
        with pytest.raises(PolicyError, match="/api/v1/gone"):
            PolicyIndex(app.routes, policy)

    def test_entries_are_added_in_one_line(self, tmp_path: Path) -> None:
        app = offline_app(tmp_path)
        extra = APIRouter(prefix="/admin/users")

        @extra.get("")
        async def list_users() -> list[str]:
            return []

        app.include_router(extra, prefix="/api/v1")
        index = PolicyIndex(app.routes, {**POLICY, "GET /api/v1/admin/users": allow(Role.ADMIN)})
        assert "GET /api/v1/admin/users" in {e.key for e in index.endpoints}

    def test_a_mount_needs_a_public_entry(self, tmp_path: Path) -> None:
        from starlette.staticfiles import StaticFiles

        app = offline_app(tmp_path)
        app.mount("/app", StaticFiles(directory=tmp_path), name="web")
        with pytest.raises(PolicyError, match="MOUNT /app"):
            check_policy(app)
        with pytest.raises(PolicyError, match="only FastAPI routes can be role-restricted"):
            PolicyIndex(app.routes, {**POLICY, "MOUNT /app": allow(Role.ADMIN)})
        PolicyIndex(app.routes, {**POLICY, "MOUNT /app": PUBLIC})


class TestTheTableItself:
    def test_only_login_health_and_the_api_description_are_public(self) -> None:
        public = {key for key, rule in POLICY.items() if rule.public}
        assert public == {
            "GET /api/v1/health",
            "GET /api/v1/openapi.json",
            "GET /api/v1/docs",
            "MOUNT /api/v1/docs/assets",
            "POST /api/v1/auth/login",
            # the login's second step and the session's own ends: each checks the credential
            # it takes (mfa-pending token, refresh token, the token to end)
            "POST /api/v1/auth/totp",
            "POST /api/v1/auth/refresh",
            "POST /api/v1/auth/logout",
            # probes, and the metrics that check their own token (or loopback)
            "GET /health/live",
            "GET /health/ready",
            "GET /metrics",
            # the event stream: it checks the access token or a one-time ticket itself (a
            # browser's EventSource sends no Authorization header)
            "GET /api/v1/notifications/stream",
        }

    def test_administration_is_for_administrators_only(self) -> None:
        admin = {key: rule for key, rule in POLICY.items() if " /api/v1/admin/" in key}
        assert admin
        assert {rule.roles for rule in admin.values()} == {frozenset({Role.ADMIN})}

    def test_only_the_chunk_routes_bound_their_own_body_and_the_manifest_has_its_own(
        self,
    ) -> None:
        assert {key: rule.body for key, rule in POLICY.items() if rule.body != "default"} == {
            "PUT /api/v1/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}": "own",
            "POST /api/v1/uploads/{upload_id}/chunks:batch": "own",
            "POST /api/v1/uploads": "manifest",
        }


def _dependency_names(dependant: Dependant) -> set[str]:
    names: set[str] = set()
    for sub in dependant.dependencies:
        call = sub.call
        names.add(getattr(call, "__qualname__", type(call).__qualname__))
        names |= _dependency_names(sub)
    return names


class TestChunkRoute:
    """The chunk PUT makes its FastAPI dependencies' checks itself (ChunkRoute): a dependency
    added to it, to its router or to the whole app would not run there. So its declared
    dependencies are pinned: a new one must be added to ChunkRoute's handler, then here."""

    def test_its_declared_dependencies_are_the_checks_its_handler_makes(
        self, tmp_path: Path
    ) -> None:
        app = offline_app(tmp_path)
        # As FastAPI builds it in the app: with the app-wide dependencies.
        (route,) = [
            c
            for c in iter_route_contexts(list(app.routes))
            if isinstance(c.original_route, ChunkRoute)
        ]
        declared = _dependency_names(route.dependant)
        assert declared == {
            "authorize",  # the policy (app-wide)
            "per_user.<locals>._limit",  # the rate limit
            "get_current_user",  # CurrentUser, which needs:
            "get_session_user",
            "HTTPBearer",
        }, declared
        # The path parameters it validates itself (_ChunkPath) are the endpoint's.
        assert {p.name for p in route.dependant.path_params} == set(_ChunkPath.model_fields)
        assert route.methods == {"PUT"}


class TestReadRoute:
    """The status poll and the list make their FastAPI dependencies' checks themselves
    (ReadRoute), as the chunk PUT does: their declared dependencies are pinned the same way,
    and they take no parameter ReadRoute does not validate (path and query only)."""

    def test_its_declared_dependencies_are_the_checks_its_handler_makes(
        self, tmp_path: Path
    ) -> None:
        app = offline_app(tmp_path)
        routes = {
            c.path_format: c
            for c in iter_route_contexts(list(app.routes))
            if isinstance(c.original_route, ReadRoute)
        }
        assert set(routes) == {"/api/v1/uploads", "/api/v1/uploads/{upload_id}"}
        for route in routes.values():
            assert _dependency_names(route.dependant) == {
                "authorize",  # the policy (app-wide)
                "get_current_user",  # CurrentUser, which needs:
                "get_session_user",
                "HTTPBearer",
            }
            dependant = route.dependant
            assert not dependant.header_params
            assert not dependant.cookie_params
            assert not dependant.body_params
            assert route.methods == {"GET"}
        assert {p.name for p in routes["/api/v1/uploads/{upload_id}"].dependant.path_params} == {
            "upload_id"
        }
