"""The web app end to end, in headless Chromium against a real gateway and a real Orthanc: a
clinician enrols TOTP and signs in with it, uploads a multi-series study from a folder, loses
the network in the middle, reloads the page offline, comes back online: the study is
delivered, Orthanc holds every instance byte for byte, no chunk the gateway acknowledged went
twice, and signing out empties the device's queue (IndexedDB)."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import pyotp
import pytest
from playwright.sync_api import BrowserContext, Dialog, Page, Request, Response, Route, expect

from relaypacs.devtools.synth import write_study
from relaypacs.dicom.documents import ENCAPSULATED_PDF
from tests.gateway import create_user, run_gateway
from tests.pacs import OrthancServer, run_orthanc
from tests.web.conftest import assert_accessible

PASSWORD = "browser-e2e-password-1"
CHUNK = 64 * 1024
CHUNK_PATH = re.compile(r"/api/v1/uploads/([0-9a-f-]+)/files/(\d+)/chunks/(\d+)$")
BATCH_PATH = re.compile(r"/api/v1/uploads/([0-9a-f-]+)/chunks:batch$")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path, orthanc: OrthancServer, web_dist: Path) -> Iterator[str]:
    data_dir = tmp_path / "data"
    env = {
        "RELAYPACS_PACS_URL": orthanc.dicomweb_url,
        "RELAYPACS_PACS_USERNAME": orthanc.auth[0],
        "RELAYPACS_PACS_PASSWORD": orthanc.auth[1],
        "RELAYPACS_PACS_PROFILE": "orthanc",
        "RELAYPACS_CHUNK_SIZE": str(CHUNK),
        "RELAYPACS_WEB_DIR": str(web_dist),
        "RELAYPACS_TOTP_REQUIRED_ROLES": '["clinician"]',
        "RELAYPACS_FORWARD_POLL_SECONDS": "0.2",
        "RELAYPACS_REPORT_AUTO_ASSIGN": "true",
    }
    create_user(data_dir, "clin", PASSWORD, env=env)
    create_user(data_dir, "rad", PASSWORD, role="radiologist", env=env)
    with run_gateway(data_dir, env) as base_url:
        yield base_url


@dataclass
class NetworkLog:
    """Every chunk PUT the page made and every one the gateway acknowledged, in order."""

    events: list[tuple[str, tuple[str, int, int]]] = field(default_factory=list)

    def on_request(self, request: Request) -> None:
        if request.method == "PUT" and (key := _chunk(request.url)):
            self.events.append(("sent", key))

    def on_response(self, response: Response) -> None:
        key = _chunk(response.url) if response.request.method == "PUT" else None
        if key is not None and response.status == 200:
            self.events.append(("acknowledged", key))

    @property
    def acknowledged(self) -> set[tuple[str, int, int]]:
        return {key for kind, key in self.events if kind == "acknowledged"}

    def resent_after_acknowledgement(self) -> list[tuple[str, int, int]]:
        acknowledged: set[tuple[str, int, int]] = set()
        resent = []
        for kind, key in self.events:
            if kind == "acknowledged":
                acknowledged.add(key)
            elif key in acknowledged:
                resent.append(key)
        return resent


def _chunk(url: str) -> tuple[str, int, int] | None:
    found = CHUNK_PATH.search(url.split("?", 1)[0])
    return (found[1], int(found[2]), int(found[3])) if found else None


def totp_at(secret: str, steps: int) -> str:
    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(time.time()) + steps)


def sign_in(page: Page, base_url: str) -> None:
    page.goto(base_url)
    expect(page).to_have_url(re.compile(r"/sign-in$"))
    page.get_by_label("Username").fill("clin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def sign_report(base_url: str, findings: str, impression: str) -> None:
    """The radiologist signs the report assigned to them, through the API."""
    with httpx.Client(base_url=f"{base_url}/api/v1", timeout=30) as http:
        login = http.post("/auth/login", json={"username": "rad", "password": PASSWORD})
        http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        deadline = time.monotonic() + 30
        items: list[dict[str, str]] = []
        while not items and time.monotonic() < deadline:
            items = http.get("/reports", params={"status": "assigned"}).json()["items"]
            time.sleep(0.2)
        assert len(items) == 1, items
        signed = http.post(
            f"/reports/{items[0]['id']}/sign",
            json={"findings": findings, "impression": impression},
        )
        assert signed.status_code == 200, signed.text


def queue_count(page: Page) -> int:
    count: int = page.evaluate(
        """() => new Promise((resolve, reject) => {
            const open = indexedDB.open("relaypacs");
            open.onsuccess = () => {
                const db = open.result;
                if (!db.objectStoreNames.contains("files")) { db.close(); resolve(0); return; }
                const tx = db.transaction(["studies", "files"]);
                let n = 0, pending = 2;
                for (const name of ["studies", "files"]) {
                    const req = tx.objectStore(name).count();
                    req.onsuccess = () => {
                        n += req.result;
                        if (--pending === 0) { db.close(); resolve(n); }
                    };
                }
            };
            open.onerror = () => reject(open.error);
        })"""
    )
    return count


class TestUploadFromTheBrowser:
    def test_totp_upload_offline_reload_online_delivered(
        self,
        gateway: str,
        orthanc: OrthancServer,
        context: BrowserContext,
        page: Page,
        tmp_path: Path,
        artefacts: Path,
    ) -> None:
        # A CD-like folder: 3 series, 12 instances of 3 chunks each.
        study = write_study(
            tmp_path / "study", instances=12, series=3, rows=256, columns=256, nested=True
        )
        chunks = sum(-(-path.stat().st_size // CHUNK) for path in study.paths)
        assert chunks == 36
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))

        # First sign-in: the role must have TOTP, so the app enrols it (QR code and key).
        sign_in(page, gateway)
        expect(page).to_have_url(re.compile(r"/enrol$"))
        page.screenshot(path=artefacts / "enrol.png")
        assert_accessible(page, "enrolment")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_alt_text("QR code for your authenticator app")).to_be_visible()
        secret = page.locator("code").inner_text().strip()
        page.screenshot(path=artefacts / "enrol-qr.png")
        assert_accessible(page, "enrolment, QR code")
        page.get_by_label("Code from the app").fill(totp_at(secret, -1))
        page.get_by_role("button", name="Turn on").click()
        expect(page.get_by_role("list", name="Recovery codes")).to_be_visible()
        page.get_by_role("button", name="Continue").click()
        expect(page.get_by_role("heading", name="Upload a study")).to_be_visible()

        # Signed out, then in again: password, then the authenticator's code.
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/sign-in$"))
        sign_in(page, gateway)
        page.screenshot(path=artefacts / "sign-in-totp.png")
        assert_accessible(page, "sign-in, TOTP step")
        page.get_by_label("Code from your authenticator app").fill(totp_at(secret, 0))
        page.get_by_role("button", name="Verify").click()
        expect(page.get_by_role("heading", name="Upload a study")).to_be_visible()
        # The service worker holds the app shell before the network goes.
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")

        # Pick the folder; the headers are read on the device and the study shown to confirm.
        page.get_by_test_id("folder-input").set_input_files(tmp_path / "study")
        expect(page.get_by_test_id("patient-name")).to_have_text("QUAXWORTHY, PERPETUA (TEST0001)")
        expect(page.get_by_test_id("study-contents")).to_contain_text("3 series, 12 images")
        page.screenshot(path=artefacts / "confirm.png")
        assert_accessible(page, "upload, confirmation")

        # A slow network (fault injection: each chunk waits before it goes), so that the
        # connection can be cut in the middle of the upload.
        log = NetworkLog()
        page.on("request", log.on_request)
        page.on("response", log.on_response)

        def slow_chunk(route: Route) -> None:
            time.sleep(0.15)
            route.continue_()

        context.route(CHUNK_PATH, slow_chunk)
        page.get_by_role("button", name="Send this study").click()
        deadline = time.monotonic() + 60
        while len(log.acknowledged) < 8 and time.monotonic() < deadline:
            page.wait_for_timeout(20)
        assert 8 <= len(log.acknowledged) < chunks, len(log.acknowledged)

        # Offline in the middle; the page reloads offline (the service worker serves the app).
        context.set_offline(True)
        page.wait_for_timeout(300)
        page.reload()
        context.unroute(CHUNK_PATH)
        expect(page.get_by_test_id("queue-state")).to_have_attribute("data-state", "paused")
        page.screenshot(path=artefacts / "offline.png")
        assert_accessible(page, "upload, queue offline")
        sent_before = len(log.acknowledged)

        # Back online: the upload goes on from the gateway's record and completes.
        context.set_offline(False)
        expect(page.get_by_test_id("queue-state")).to_have_attribute(
            "data-state", "sent", timeout=60_000
        )
        # Every chunk acknowledged once at most (one in flight when the network went may have
        # reached the gateway unseen: its record says so and it is not sent again either).
        assert chunks - 6 <= len(log.acknowledged) <= chunks
        assert sent_before < len(log.acknowledged)
        assert log.resent_after_acknowledgement() == []

        # My uploads: delivered, PACS confirmed 12/12.
        page.get_by_role("link", name="My uploads").click()
        expect(page.get_by_test_id("upload-status")).to_have_attribute(
            "data-status", "delivered", timeout=60_000
        )
        expect(page.get_by_test_id("pacs-confirmed")).to_have_text("PACS confirmed 12/12")
        # The study's timeline, and the bell's notice of the delivery (the live stream).
        page.get_by_role("button", name="Show timeline").click()
        timeline = page.get_by_role("list", name="Timeline")
        expect(timeline).to_contain_text("Confirmed by the PACS")
        expect(timeline).to_contain_text("PACS confirmed 12/12")
        # Received, checked and accepted, delivered: three notices.
        expect(page.get_by_test_id("unread")).to_have_text("3")
        page.get_by_test_id("bell").click()
        notices = page.get_by_role("list", name="Notifications")
        expect(notices).to_contain_text("A study was delivered to the PACS.")
        expect(notices).to_contain_text("A study was checked and accepted.")
        page.get_by_test_id("bell").click()

        # The radiologist the rule assigned signs the report: the clinician sees it, reads it
        # and downloads its PDF.
        sign_report(gateway, "No acute findings.", "Normal study.")
        expect(page.get_by_test_id("report-status")).to_have_attribute(
            "data-status", "ready", timeout=30_000
        )
        expect(page.get_by_test_id("unread")).to_have_text("4")
        page.get_by_role("button", name="View report").click()
        expect(page.get_by_role("article", name="Report")).to_contain_text("No acute findings.")
        with page.expect_download() as download:
            page.get_by_role("button", name="Download PDF").click()
        assert "QUAXWORTHY" not in download.value.suggested_filename
        assert Path(download.value.path()).read_bytes().startswith(b"%PDF")
        page.screenshot(path=artefacts / "report.png")
        assert_accessible(page, "my uploads, report")
        page.screenshot(path=artefacts / "my-uploads.png")
        assert_accessible(page, "my uploads")

        # Orthanc holds every instance, byte for byte; anything more in the study is the signed
        # report written back (one Encapsulated PDF instance).
        held = orthanc.sop_instance_uids(study.study_uid)
        assert set(study.sop_uids) <= held
        assert len(held - set(study.sop_uids)) <= 1
        for uid in held - set(study.sop_uids):
            report = orthanc.file_by_sop_uid(uid)
            assert report is not None
            assert pydicom.dcmread(io.BytesIO(report)).SOPClassUID == ENCAPSULATED_PDF
        for path, sop_uid in zip(study.paths, study.sop_uids, strict=True):
            stored = orthanc.file_by_sop_uid(sop_uid)
            assert stored is not None
            assert hashlib.sha256(stored).digest() == hashlib.sha256(path.read_bytes()).digest()

        # Sign-out empties the device's queue; nothing of the patient went to the console
        # or into an address.
        assert queue_count(page) > 0
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/sign-in$"))
        assert_accessible(page, "sign-in")
        assert queue_count(page) == 0
        assert not any("QUAXWORTHY" in line or "19310412" in line for line in console)
        assert not any("QUAXWORTHY" in url for _, (url, *_) in log.events)


@pytest.fixture
def short_token_gateway(tmp_path: Path, web_dist: Path) -> Iterator[str]:
    """A gateway without a PACS whose access tokens live 3 s."""
    data_dir = tmp_path / "data"
    env = {"RELAYPACS_WEB_DIR": str(web_dist), "RELAYPACS_ACCESS_TOKEN_MINUTES": "0.05"}
    create_user(data_dir, "clin", PASSWORD, env=env)
    with run_gateway(data_dir, env) as base_url:
        yield base_url


class TestTwoTabs:
    def test_refreshes_at_once_take_turns_and_the_session_lives(
        self, short_token_gateway: str, context: BrowserContext, page: Page
    ) -> None:
        sign_in(page, short_token_gateway)
        expect(page.get_by_role("heading", name="Upload a study")).to_be_visible()
        other = context.new_page()
        other.goto(f"{short_token_gateway}/uploads")  # signed in by the refresh cookie
        expect(other.get_by_role("heading", name="My uploads")).to_be_visible()
        page.goto(f"{short_token_gateway}/uploads")
        expect(page.get_by_role("heading", name="My uploads")).to_be_visible()

        # The refresh calls of both tabs, in the order the browser made and finished them.
        refreshes: list[tuple[str, int]] = []
        for tab in (page, other):
            tab.on("request", lambda r: _on_refresh(refreshes, "start", r))
            tab.on("requestfinished", lambda r: _on_refresh(refreshes, "end", r))
            tab.on("requestfailed", lambda r: _on_refresh(refreshes, "end", r))

        # A slow network (fault injection: 400 ms of latency per request), so that the two
        # tabs' refreshes would be in flight together if nothing made them take turns.
        for tab in (page, other):
            context.new_cdp_session(tab).send(
                "Network.emulateNetworkConditions",
                {
                    "offline": False,
                    "latency": 400,
                    "downloadThroughput": -1,
                    "uploadThroughput": -1,
                },
            )
        # Both access tokens expire; both tabs reload at once and each needs a fresh token.
        page.wait_for_timeout(3500)
        page.evaluate("setTimeout(() => location.reload(), 0)")
        other.evaluate("setTimeout(() => location.reload(), 0)")
        for tab in (page, other):
            expect(tab.get_by_role("heading", name="My uploads")).to_be_visible()
            expect(tab.get_by_role("list", name="Uploads")).to_be_attached()
        page.wait_for_timeout(500)

        # One tab refreshed at a time (never two with the same refresh token in flight)...
        assert refreshes, "no refresh was made"
        in_flight = 0
        for kind, _ in refreshes:
            in_flight += 1 if kind == "start" else -1
            assert in_flight <= 1, refreshes
        # ...and the session lives on: no reuse was detected, both tabs still call the API.
        page.wait_for_timeout(3500)
        for tab in (page, other):
            tab.reload()
            expect(tab.get_by_role("heading", name="My uploads")).to_be_visible()
            assert "/sign-in" not in tab.url


def _on_refresh(log: list[tuple[str, int]], kind: str, request: Request) -> None:
    if request.url.endswith("/api/v1/auth/refresh"):
        log.append((kind, id(request)))


class TestZipArchive:
    def test_a_zipped_cd_is_read_on_a_phone_and_sign_out_warns_then_clears_it(
        self, short_token_gateway: str, page: Page, tmp_path: Path
    ) -> None:
        write_study(tmp_path / "cd", instances=4, series=2, rows=16, columns=16, with_dicomdir=True)
        archive = tmp_path / "export.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
            for path in sorted((tmp_path / "cd").rglob("*")):
                out.write(path, path.relative_to(tmp_path))
        sign_in(page, short_token_gateway)
        expect(page.get_by_role("heading", name="Upload a study")).to_be_visible()
        # By keyboard only: Tab to "Choose files", Enter opens the file chooser. The chooser is
        # awaited before the first Tab: Playwright turns its interception on asynchronously, and
        # an Enter pressed before that opened a chooser nobody saw (a flaky timeout under load).
        with page.expect_file_chooser() as chooser:
            for _ in range(20):
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.textContent") == "Choose files":
                    break
            page.keyboard.press("Enter")
        chooser.value.set_files(archive)
        expect(page.get_by_test_id("study-contents")).to_contain_text("2 series, 4 images")
        expect(page.get_by_text("Not sent")).to_have_count(0)  # the DICOMDIR goes with the study
        # A 360 px phone: nothing wider than the screen.
        page.set_viewport_size({"width": 360, "height": 740})
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 360, width

        # Queued, and held before its first chunk (fault injection: the network never answers;
        # these small files go in chunk batches).
        page.route(CHUNK_PATH, lambda route: None)
        page.route(BATCH_PATH, lambda route: None)
        page.get_by_role("button", name="Send this study").click()
        expect(page.get_by_test_id("queue-state")).to_have_attribute("data-state", "uploading")
        # Signing out warns first: the queue holds patient data and unfinished uploads.
        warnings: list[str] = []

        def answer(dialog: Dialog, accept: bool) -> None:
            warnings.append(dialog.message)
            if accept:
                dialog.accept()
            else:
                dialog.dismiss()

        page.once("dialog", lambda dialog: answer(dialog, accept=False))
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Upload a study")).to_be_visible()
        assert queue_count(page) > 0
        page.once("dialog", lambda dialog: answer(dialog, accept=True))
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/sign-in$"))
        assert queue_count(page) == 0
        assert len(warnings) == 2
        assert "1 upload(s) are not finished" in warnings[0]


class TestNewVersion:
    def test_a_deployed_version_is_offered_and_taken_on_reload(
        self, tmp_path: Path, web_dist: Path, context: BrowserContext, page: Page
    ) -> None:
        deployed = tmp_path / "dist"
        shutil.copytree(web_dist, deployed)
        data_dir = tmp_path / "data"
        env = {"RELAYPACS_WEB_DIR": str(deployed)}
        create_user(data_dir, "clin", PASSWORD, env=env)
        with run_gateway(data_dir, env) as base_url:
            sign_in(page, base_url)
            expect(page.get_by_role("heading", name="Upload a study")).to_be_visible()
            page.evaluate("navigator.serviceWorker.ready.then(() => true)")
            expect(page.get_by_text("A new version of RelayPACS is available.")).to_have_count(0)

            # A new version is deployed (another service worker); the app notices it.
            sw = deployed / "sw.js"
            sw.write_text(sw.read_text() + "\n// the next version\n")
            page.evaluate("navigator.serviceWorker.getRegistration().then((r) => r.update())")
            prompt = page.get_by_text("A new version of RelayPACS is available.")
            expect(prompt).to_be_visible(timeout=15_000)
            with page.expect_navigation():
                page.get_by_role("button", name="Reload").click()
            expect(page.get_by_role("heading", name="Upload a study")).to_be_visible()
            expect(prompt).to_have_count(0)
