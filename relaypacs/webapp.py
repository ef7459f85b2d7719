"""The web app (web/, built into web/dist): served by the gateway itself at `/`, after the API.

Vite names every asset under `assets/` by the hash of its content, so those are cached for good
(`immutable`); `index.html`, the service worker and the manifest are never cached, so a deployed
version is seen at the next load and the service worker offers the update. A path of the app's
own router (`/uploads`) gets `index.html`; `/api/...` is never the app (an unknown API path is
the API's own 404). The security headers, the CSP included, are the HTTP surface's
(relaypacs/middleware.py), as on every response.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["WebApp"]

IMMUTABLE = "public, max-age=31536000, immutable"
NEVER_CACHED = "no-store"
REVALIDATE = "no-cache"
# Files a new version replaces under the same name: the browser must see the new one at once.
_ENTRY_POINTS = frozenset({"index.html", "sw.js", "manifest.webmanifest"})


class WebApp(StaticFiles):
    """The built app's files, with the caching each deserves and index.html for app routes."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, html=False, check_dir=True)

    async def get_response(self, path: str, scope: Scope) -> Response:
        path = path.replace(os.sep, "/").lstrip("/")
        if path in ("", "."):
            path = "index.html"
        if path == "api" or path.startswith("api/"):
            raise HTTPException(404, "No such endpoint.")
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(405, "The web app's files are read-only.")
        name = path.rsplit("/", 1)[-1]
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            # A route of the app's own router (no file extension): the app decides what it shows.
            if exc.status_code != 404 or "." in name:
                raise
            path = "index.html"
            response = await super().get_response(path, scope)
        if path.startswith("assets/"):
            response.headers["cache-control"] = IMMUTABLE
        elif path in _ENTRY_POINTS or path.startswith("workbox-"):
            response.headers["cache-control"] = NEVER_CACHED
        else:  # icons and the like: cached, checked again each time
            response.headers["cache-control"] = REVALIDATE
        return response
