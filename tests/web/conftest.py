"""The web app's browser tests: Debian's Chromium (never a browser download) driven by
Playwright's Python API, against the built app served by a real gateway.

The fixtures are this module's, not pytest-playwright's: that plugin's Playwright lives for the
whole session and keeps an event loop running in the main thread, so that every asyncio test
after the first browser test failed. Here the browser lives for one test module."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Response, expect, sync_playwright

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = REPO / "tests" / "web" / "artefacts"


def signed_in(
    browser: Browser, base_url: str, username: str, password: str
) -> tuple[BrowserContext, Page]:
    """A browser profile of its own for one user (a tablet's screen), signed in."""
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    page = context.new_page()
    page.goto(base_url)
    expect(page).to_have_url(re.compile(r"/sign-in$"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    return context, page


class RefusedCalls:
    """A page's `response` listener that keeps the API calls refused (401, 403): a page asks
    the API only what its user's role may (the app follows the policy table)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, response: Response) -> None:
        if "/api/v1/" in response.url and response.status in (401, 403):
            self.calls.append(f"{response.request.method} {response.url} {response.status}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, for the tests of one module (then stopped with its Playwright, which
    leaves no event loop behind for the asyncio tests that follow)."""
    if not CHROMIUM.exists():
        raise RuntimeError("the browser tests need Debian's chromium: scripts/services.sh")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (cookies, IndexedDB, service workers) per test."""
    new = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        yield new
    finally:
        new.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


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
