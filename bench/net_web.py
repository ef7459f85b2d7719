"""The web app through the shaped link of `bench --net` (bench/net.py): contender `web`.

Headless Chromium (Debian's, the built app served by the gateway) reaches the gateway only
through the fault proxy on the shaped port, as the CLI does. The app runs as in a browser:
its chunk size chosen by itself (web/src/features/upload/link.ts: the first guess from the
round trip and navigator.connection.downlink, then 0.5 s of the measured rate in flight), 6
chunk PUTs in flight, the 10 s stall watchdog. Timed from the folder picked (headers read on
the device, files hashed) to the study accepted (`complete` answered): the CLI's time also
counts its process start and sign-in, which the page did before.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench.gateway import PASSWORD, REPO, USERNAME, server_env

if TYPE_CHECKING:
    from bench import studies
    from bench.net import NetResult, NetSpec

WEB_DIST = REPO / "web" / "dist"
CHROMIUM = Path("/usr/bin/chromium")


def ensure_built() -> None:
    """The built app (outside the namespace: npm ci may need the network)."""
    stale = subprocess.run([REPO / "scripts" / "web.sh", "stale"], cwd=REPO, check=False)
    if stale.returncode == 0:
        subprocess.run([REPO / "scripts" / "web.sh", "build"], cwd=REPO, check=True)


def online_interface() -> None:
    """A veth pair up with an address, in the namespace: Chromium counts itself offline when
    only the loopback is up (navigator.onLine false: the app would wait for the network)."""
    if subprocess.run(["ip", "link", "show", "rpweb0"], capture_output=True).returncode == 0:
        return
    for cmd in (
        ["ip", "link", "add", "rpweb0", "type", "veth", "peer", "name", "rpweb1"],
        ["ip", "addr", "add", "10.254.0.1/30", "dev", "rpweb0"],
        ["ip", "addr", "add", "10.254.0.2/30", "dev", "rpweb1"],
        ["ip", "link", "set", "rpweb0", "up"],
        ["ip", "link", "set", "rpweb1", "up"],
    ):
        subprocess.run(cmd, check=True, capture_output=True)


def run_web(
    study: studies.Study, net: NetSpec, scratch: Path, seed: int, *, port: int
) -> NetResult:
    from playwright.sync_api import expect, sync_playwright

    from bench.net import NetResult, fault_proxy
    from tests.gateway import create_user, run_gateway

    result = NetResult(study.spec.key, "web", payload=study.total_bytes)
    online_interface()
    data_dir = scratch / "data"
    env = {**server_env(None), "RELAYPACS_WEB_DIR": str(WEB_DIST)}
    env["RELAYPACS_TOTP_REQUIRED_ROLES"] = "[]"
    create_user(data_dir, USERNAME, PASSWORD, env=env)
    with run_gateway(data_dir, env, log_path=scratch / "gateway.log") as base_url:
        upstream = int(base_url.rsplit(":", 1)[1])
        with (
            fault_proxy(("127.0.0.1", upstream), port, net, seed) as proxy,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                page = browser.new_context().new_page()
                page.goto(f"http://127.0.0.1:{port}", timeout=120_000)
                page.get_by_label("Username").fill(USERNAME)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("heading", name="Upload a study")).to_be_visible(
                    timeout=120_000
                )
                before = proxy.stats.upstream_bytes
                started = time.perf_counter()
                page.get_by_test_id("folder-input").set_input_files(study.directory)
                page.get_by_role("button", name="Send this study").click(timeout=600_000)
                expect(page.get_by_test_id("queue-state")).to_have_attribute(
                    "data-state", "sent", timeout=1_800_000
                )
                result.seconds = time.perf_counter() - started
                marks: dict[str, float] = page.evaluate(
                    "Object.fromEntries(performance.getEntriesByType('mark')"
                    ".filter((m) => m.name.startsWith('relaypacs:'))"
                    ".map((m) => [m.name.slice(10), m.startTime]))"
                )
                if "chunks-start" in marks and "chunks-end" in marks:
                    phase = (marks["chunks-end"] - marks["chunks-start"]) / 1000
                    result.extra["upload_seconds"] = round(phase, 2)
            finally:
                browser.close()
            stats = proxy.stats
        # The page's own loading and sign-in crossed the link before: not the upload's.
        result.uplink_bytes = stats.upstream_bytes - before
        result.cuts, result.connections = stats.cuts, stats.connections
        with httpx.Client(base_url=f"{base_url}/api/v1", timeout=60) as http:
            login = http.post("/auth/login", json={"username": USERNAME, "password": PASSWORD})
            http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            [item] = http.get("/uploads").json()["items"]
            upload = http.get(f"/uploads/{item['id']}", params={"files": "false"}).json()
        result.chunk_size = upload["chunk_size"]
        if upload["status"] != "validated":
            result.error = f"the upload is {upload['status']}"
    return result
