"""The web app's upload engine on a bad link: headless Chromium reaches a real gateway only
through a fault proxy (relaypacs.devtools.faultproxy) 30 ms away, which resets every
connection in the middle of the upload, or silently stops relaying (no reset ever comes).

The app asks for a chunk size fitted to the link (the first guess away from a local network,
not the gateway's 8 MiB), so a cut costs at most the chunks in flight; a stalled chunk PUT is
given up by its stall watchdog and sent again on a new connection. The study arrives whole:
validated, every file's SHA-256 the one on the device."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Request, Response, Route, expect

from relaypacs.devtools.faultproxy import FaultProxy
from relaypacs.devtools.synth import write_study
from tests.gateway import create_user, run_gateway
from tests.web.conftest import signed_in

PASSWORD = "bad-network-password-1"
KiB = 1024
# The app's first guess away from a local network (web/src/features/upload/link.ts): the chunk
# size it asks for is at most this (less when the browser's own estimate says the link is slow).
FIRST_GUESS = 256 * KiB
PARALLEL = 6  # the app's chunk PUTs in flight (uploader.ts)
GATEWAY_CHUNK = 8 * 1024 * KiB  # the gateway's default, which the app is to lower
# What crosses the link besides the chunks' bodies: the app's pages and scripts requested,
# each request's line and headers (a chunk PUT's are under 1 KiB, its bearer token most of
# it), the sign-in, the manifest, the probes of the round trip.
OVERHEAD = 512 * KiB
CHUNK_PATH = "/chunks/"


class ThreadedProxy:
    """A FaultProxy on an event loop of its own thread (the browser tests are synchronous)."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = FaultProxy(upstream, delay=delay)
        self.call(self.proxy.start())

    def call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=30)

    def arm(self, fault: Callable[[FaultProxy], None]) -> None:
        """Change the proxy's faults on its own loop."""

        async def apply() -> None:
            fault(self.proxy)

        self.call(apply())

    @property
    def base_url(self) -> str:
        return f"http://{self.proxy.address}"

    def close(self) -> None:
        self.call(self.proxy.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def gateway(tmp_path: Path, web_dist: Path) -> Iterator[str]:
    """A gateway without a PACS (a verified study stays `validated`), its chunk size the
    default (8 MiB)."""
    data_dir = tmp_path / "data"
    env = {"RELAYPACS_WEB_DIR": str(web_dist), "RELAYPACS_TOTP_REQUIRED_ROLES": "[]"}
    create_user(data_dir, "clin", PASSWORD, env=env)
    with run_gateway(data_dir, env) as base_url:
        yield base_url


@pytest.fixture
def proxy(gateway: str) -> Iterator[ThreadedProxy]:
    url = urlsplit(gateway)
    assert url.hostname is not None
    assert url.port is not None
    # 15 ms each way: a round trip of 30 ms, beyond a local network for the app.
    threaded = ThreadedProxy((url.hostname, url.port), delay=0.015)
    try:
        yield threaded
    finally:
        threaded.close()


@dataclass
class ChunkLog:
    """The app's chunk PUTs as the page saw them: the ones the gateway stored (200), the ones
    that failed (aborted by the stall watchdog, or cut)."""

    stored: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def on_response(self, response: Response) -> None:
        path = urlsplit(response.url).path
        if response.request.method == "PUT" and CHUNK_PATH in path and response.status == 200:
            self.stored.append(path)

    def on_failed(self, request: Request) -> None:
        path = urlsplit(request.url).path
        if request.method == "PUT" and CHUNK_PATH in path:
            self.failed.append(path)


def _upload(
    browser: Browser,
    proxy: ThreadedProxy,
    study_dir: Path,
    during: Callable[[], None],
    images: int = 4,
) -> ChunkLog:
    """Sign in through the proxy, pick the study, send it; `during` arms the faults once the
    study is shown; returns when the app says the study is sent."""
    context, page = signed_in(browser, proxy.base_url, "clin", PASSWORD)
    try:
        log = ChunkLog()
        page.on("response", log.on_response)
        page.on("requestfailed", log.on_failed)
        page.get_by_test_id("folder-input").set_input_files(study_dir)
        expect(page.get_by_test_id("study-contents")).to_contain_text(f"{images} images")
        during()
        page.get_by_role("button", name="Send this study").click()
        # A guard, not a measure: a stall the app never noticed would hang here for good.
        expect(page.get_by_test_id("queue-state")).to_have_attribute(
            "data-state", "sent", timeout=180_000
        )
        return log
    finally:
        context.close()


def _arrived_whole(gateway: str, study_paths: list[Path]) -> dict[str, Any]:
    """The gateway's upload of the study: validated, each file's SHA-256 the local file's."""
    with httpx.Client(base_url=f"{gateway}/api/v1", timeout=30) as http:
        login = http.post("/auth/login", json={"username": "clin", "password": PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        [upload] = http.get("/uploads").json()["items"]
        upload = http.get(f"/uploads/{upload['id']}").json()
    assert upload["status"] == "validated", upload
    assert upload["received_bytes"] == upload["total_bytes"]
    local = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in study_paths)
    assert sorted(f["sha256"] for f in upload["files"]) == local
    assert all(f["status"] == "valid" for f in upload["files"]), upload["files"]
    return upload  # type: ignore[no-any-return]


CHUNK_ROUTE = "/api/v1/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}"
BATCH_ROUTE = "/api/v1/uploads/{upload_id}/chunks:batch"


def _chunk_puts(gateway: str, method: str = "PUT", route: str = CHUNK_ROUTE) -> tuple[int, int]:
    """(chunk requests the gateway received and answered, whatever the answer: PUTs of one
    chunk, or POSTs of a chunk batch with `route`; chunks it stored), from its metrics: a
    request cut in the middle of its body counts as received, not stored."""
    received = stored = 0.0
    for line in httpx.get(f"{gateway}/metrics", timeout=30).text.splitlines():
        if line.startswith("relaypacs_http_request_duration_seconds_count{") and (
            f'method="{method}"' in line and f'route="{route}"' in line
        ):
            received += float(line.rsplit(" ", 1)[1])
        elif line.startswith('relaypacs_upload_chunks_total{outcome="stored"}'):
            stored += float(line.rsplit(" ", 1)[1])
    return int(received), int(stored)


def _study(directory: Path) -> tuple[list[Path], int]:
    """Four files of about 2 MiB (512x512 16-bit, 4 frames): each is split into chunks."""
    study = write_study(directory, instances=4, rows=512, columns=512, frames=4)
    assert all(p.stat().st_size > 1 << 20 for p in study.paths)
    return list(study.paths), study.total_bytes


def test_a_cut_costs_at_most_the_small_chunks_in_flight(
    browser: Browser, gateway: str, proxy: ThreadedProxy, tmp_path: Path
) -> None:
    paths, payload = _study(tmp_path / "study")
    cuts = 3

    def cut_three_times() -> None:
        async def cutter() -> None:
            for _ in range(cuts):
                proxy.proxy.cut_after_bytes = payload // (cuts + 1)
                while proxy.proxy.cut_after_bytes is not None:
                    await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(cutter(), proxy.loop)

    log = _upload(browser, proxy, tmp_path / "study", cut_three_times)
    upload = _arrived_whole(gateway, paths)

    # The app asked for a small chunk size and got it (the gateway's own is 8 MiB; Playwright
    # does not show the body of the app's POST /uploads, the upload's record says it).
    asked = upload["chunk_size"]
    assert asked <= FIRST_GUESS, asked
    chunks = sum(-(-p.stat().st_size // asked) for p in paths)
    assert proxy.proxy.stats.cuts == cuts
    assert proxy.proxy.stats.connections_cut >= cuts
    # Every chunk stored once. The PUTs the gateway received beyond those were the ones in
    # flight at a cut: cut in their body, or stored but their answer lost (then sent again
    # and answered "already stored"). (Chromium itself sends a PUT again when a reused
    # connection is reset: the page sees fewer failures than the link had.)
    received, stored = _chunk_puts(gateway)
    assert stored == chunks
    assert len(set(log.stored)) == chunks
    assert received - stored <= cuts * PARALLEL, (received, stored)
    # What crossed the link beyond the payload: at most the chunks in flight at each cut.
    resent = proxy.proxy.stats.upstream_bytes - payload
    assert resent <= cuts * PARALLEL * asked + OVERHEAD, (resent, proxy.proxy.stats)
    # (With the gateway's 8 MiB chunks each 2 MiB file would be one chunk, and a cut would
    # cost the 4 files in flight, up to the whole payload.)
    assert cuts * PARALLEL * asked + OVERHEAD < cuts * min(payload, PARALLEL * GATEWAY_CHUNK)


def test_many_small_files_go_in_chunk_batches_and_a_cut_costs_only_the_batches_in_flight(
    browser: Browser, gateway: str, proxy: ThreadedProxy, tmp_path: Path
) -> None:
    """60 CT slices of 128 x 128 (33 kB each, one chunk): the app sends them several per
    request (`POST /uploads/{id}/chunks:batch`) through the link 30 ms away, cut once in the
    middle. The study arrives validated, every file's SHA-256 the one on the device, each file
    stored once; the gateway's metrics count the batches and not one PUT per file."""
    study = write_study(tmp_path / "study", instances=60, series=2, rows=128, columns=128)
    paths, payload = list(study.paths), study.total_bytes
    assert all(p.stat().st_size < 64 * KiB for p in paths)

    def cut_once() -> None:
        proxy.arm(lambda p: setattr(p, "cut_after_bytes", payload // 2))

    log = _upload(browser, proxy, tmp_path / "study", cut_once, images=len(paths))
    upload = _arrived_whole(gateway, paths)

    asked = upload["chunk_size"]  # what a batch's parts may carry at most
    assert asked <= FIRST_GUESS, asked
    assert proxy.proxy.stats.cuts == 1
    batches, stored = _chunk_puts(gateway, "POST", BATCH_ROUTE)
    puts, _ = _chunk_puts(gateway)
    assert stored == len(paths)  # each file stored once (one cut in flight: already stored)
    assert puts == 0  # no file went alone
    assert log.stored == []
    # Several files a request: at least the payload over the parts' limit, well under one
    # request per file even with the batches cut in flight sent again.
    assert -(-payload // asked) <= batches <= len(paths) // 3 + PARALLEL, batches
    resent = proxy.proxy.stats.upstream_bytes - payload
    assert resent <= PARALLEL * (asked + 4 * KiB) + OVERHEAD, (resent, proxy.proxy.stats)


def test_a_silent_stall_is_noticed_and_the_chunks_sent_again(
    browser: Browser, gateway: str, proxy: ThreadedProxy, tmp_path: Path
) -> None:
    paths, payload = _study(tmp_path / "study")

    def stall_midway() -> None:
        proxy.arm(lambda p: setattr(p, "stall_after_bytes", payload // 2))

    log = _upload(browser, proxy, tmp_path / "study", stall_midway)
    upload = _arrived_whole(gateway, paths)

    # The stalled connections were never reset (the proxy holds them open): the app gave up
    # the chunk PUTs on them by itself and sent them again on new connections.
    assert proxy.proxy.stats.connections_stalled >= 1
    assert proxy.proxy.stats.cuts == 0
    # The page saw the PUTs on the stalled connections fail: the app aborted them.
    assert 1 <= len(log.failed) <= PARALLEL, log.failed
    asked = upload["chunk_size"]
    assert asked <= FIRST_GUESS
    chunks = sum(-(-p.stat().st_size // asked) for p in paths)
    received, stored = _chunk_puts(gateway)
    assert stored == chunks
    assert len(set(log.stored)) == chunks
    assert received - stored <= PARALLEL, (received, stored)
    resent = proxy.proxy.stats.upstream_bytes - payload
    assert resent <= PARALLEL * asked + OVERHEAD, (resent, proxy.proxy.stats)


def test_a_gateway_down_longer_than_the_quick_retries_is_waited_for_not_failed(
    browser: Browser, gateway: str, tmp_path: Path
) -> None:
    """The gateway answers every chunk PUT `503 storage_unavailable` (a storage outage, a
    gateway being upgraded behind its proxy) for longer than the app's quick retries (5, about
    15 s, after which it used to mark the study failed): the study shows "Waiting for the
    gateway" with the reason, is tried again by itself, and once the gateway answers again it
    arrives whole without the clinician doing anything."""
    paths, _ = _study(tmp_path / "study")
    context, page = signed_in(browser, gateway, "clin", PASSWORD)
    refused: list[str] = []
    try:
        down = True

        def storage_down(route: Route) -> None:
            if not down:
                route.continue_()
                return
            refused.append(urlsplit(route.request.url).path)
            route.fulfill(
                status=503,
                json={"error": {"code": "storage_unavailable", "message": "down", "details": {}}},
            )

        page.route("**/chunks/*", storage_down)
        page.get_by_test_id("folder-input").set_input_files(tmp_path / "study")
        expect(page.get_by_test_id("study-contents")).to_contain_text("4 images")
        page.get_by_role("button", name="Send this study").click()
        state = page.get_by_test_id("queue-state")
        # Past the quick retries: waiting, the reason shown, not failed.
        expect(state).to_have_attribute("data-state", "waiting", timeout=60_000)
        expect(page.get_by_text("Waiting for the gateway (The gateway's storage")).to_be_visible()
        # Tried again while waiting (the next try is 8 to 16 s away), and still not failed.
        tried = len(refused)
        for _ in range(600):  # a guard, not a measure
            if len(refused) > tried:
                break
            page.wait_for_timeout(100)
        assert len(refused) > tried, refused
        expect(state).to_have_attribute("data-state", "waiting")
        # The gateway is back: the next tries get through, by themselves.
        down = False
        expect(state).to_have_attribute("data-state", "sent", timeout=120_000)
        expect(page.get_by_role("button", name="Try again")).to_have_count(0)
    finally:
        context.close()
    _arrived_whole(gateway, paths)
    # Every chunk stored once (the refused PUTs never reached the gateway).
    received, stored = _chunk_puts(gateway)
    assert received == stored
