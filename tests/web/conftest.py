"""The web app's browser tests: Debian's Chromium (never a browser download) driven by
pytest-playwright, against the built app served by a real gateway."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

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
    """The built app (scripts/web.sh builds it when missing or older than its sources), and
    web/node_modules (axe-core for the accessibility checks)."""
    subprocess.run([REPO / "scripts" / "web.sh", "deps"], cwd=REPO, check=True)
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


AXE = REPO / "web" / "node_modules" / "axe-core" / "axe.min.js"


def assert_accessible(page: Page, name: str) -> None:
    """axe-core (WCAG 2 A and AA rules) finds no serious or critical violation on the page.
    Evaluated through the DevTools protocol, so the page's CSP stays as it is."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    found: list[str] = page.evaluate(
        """async () => {
            const result = await axe.run(document, {
                runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"],
            });
            return result.violations
                .filter((v) => v.impact === "serious" || v.impact === "critical")
                .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target).join(", ")}`);
        }"""
    )
    assert found == [], f"{name}: {found}"
