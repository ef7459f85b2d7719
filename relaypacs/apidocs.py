"""The interactive API documentation (Swagger UI), served from the gateway itself: its script and
style come from the `fastapi-offline` package's files, never a CDN, and its one inline script is
allowed by its hash, not by 'unsafe-inline'. Off unless `RELAYPACS_API_DOCS` is on: a gateway
in production publishes neither the page nor the OpenAPI document."""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_PATH = "/api/v1/docs"
ASSETS_PATH = "/api/v1/docs/assets"
OPENAPI_PATH = "/api/v1/openapi.json"


def _assets_dir() -> Path:
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


def _page(title: str) -> str:
    body = get_swagger_ui_html(
        openapi_url=OPENAPI_PATH,
        title=f"{title} - API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        oauth2_redirect_url=None,
    ).body
    return bytes(body).decode()


def docs_csp(page: str) -> str:
    """The page's Content-Security-Policy: everything from 'self', its inline scripts by hash."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


def install_api_docs(app: FastAPI) -> str:
    """Add the page and its assets to `app` (whose openapi_url is OPENAPI_PATH); returns the
    page's Content-Security-Policy for the HTTP middleware."""
    page = _page(app.title)
    app.mount(ASSETS_PATH, StaticFiles(directory=_assets_dir()), name="api-docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return HTMLResponse(page)

    return docs_csp(page)


# Every error answer of the API, whatever its status (relaypacs/main.py renders them all).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "Machine-readable: what went wrong (docs/api.md lists them).",
                },
                "message": {"type": "string", "description": "For a human: what to do."},
                "details": {"type": "object", "additionalProperties": True},
                "request_id": {
                    "anyOf": [{"type": "string"}, {"type": "null"}],
                    "description": "The request's id in the gateway's log (server errors).",
                },
            },
        }
    },
}
_ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def document_errors(app: FastAPI) -> None:
    """Make the app's OpenAPI document say what its errors are: one `Error` shape for every
    status it does not list (`default`) and for 422, which FastAPI would otherwise document
    as its own `HTTPValidationError`, a shape this API never answers."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _with_errors(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _with_errors(doc: dict[str, Any]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "The request is not valid (`invalid_request`; "
                    "`details.problems` names each field).",
                    "content": _ERROR_REF,
                }
            responses["default"] = {
                "description": "An error: its `code` says which.",
                "content": _ERROR_REF,
            }
