"""The web app's browser tests: Debian's Chromium (never a browser download) driven by
pytest-playwright, against the built app served by a real gateway."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = REPO / "tests" / "web" / "artefacts"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not CHROMIUM.exists():
        raise RuntimeError("the browser tests need Debian's chromium: scripts/services.sh")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "headless": True}


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """The built app (scripts/web.sh builds it when missing or older than its sources)."""
    stale = subprocess.run([REPO / "scripts" / "web.sh", "stale"], cwd=REPO, check=False)
    if stale.returncode == 0:
        subprocess.run([REPO / "scripts" / "web.sh", "build"], cwd=REPO, check=True)
    return REPO / "web" / "dist"


@pytest.fixture
def artefacts(request: pytest.FixtureRequest) -> Path:
    """Where a test keeps its screenshots (kept after the run)."""
    directory: Path = ARTEFACTS / str(request.node.name)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
