"""The radiologist's and the administrator's pages end to end, in headless Chromium against a
real gateway and a real Orthanc: a clinician uploads a study; the administrator (who sees only
the administration) assigns it; the radiologist finds it in the worklist, reads the study page
("PACS confirmed N/N"), writes the report (the draft is saved as they type and survives a
reload), signs it, then amends it with a reason (the history shows both versions); the
clinician's page shows the report without a reload, and the report appears in Orthanc as an
Encapsulated PDF instance of the study. A clinician who types the worklist's
address sees "not allowed", and the API was asked nothing it refuses. axe-core on every new
page."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect
from pypdf import PdfReader

from relaypacs.devtools.synth import DEFAULT_PATIENT, write_study
from relaypacs.dicom.documents import ENCAPSULATED_PDF
from tests.gateway import create_user, run_gateway
from tests.pacs import OrthancServer, run_orthanc
from tests.web.conftest import RefusedCalls, assert_accessible, signed_in

PASSWORD = "worklist-e2e-password-1"
FAMILY = DEFAULT_PATIENT.name.split("^")[0]


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
        "RELAYPACS_WEB_DIR": str(web_dist),
        # TOTP is the clinician test's subject (test_browser.py): here the roles' pages are.
        "RELAYPACS_TOTP_REQUIRED_ROLES": "[]",
        "RELAYPACS_FORWARD_POLL_SECONDS": "0.2",
        "RELAYPACS_REPORT_AUTO_ASSIGN": "false",
    }
    create_user(data_dir, "clin", PASSWORD, env=env)
    create_user(data_dir, "rad", PASSWORD, role="radiologist", env=env)
    create_user(data_dir, "boss", PASSWORD, role="admin", env=env)
    with run_gateway(data_dir, env) as base_url:
        yield base_url


def _encapsulated_pdf(orthanc: OrthancServer, sop_uid: str) -> str:
    """The text of the PDF that the PACS holds as this Encapsulated PDF instance."""
    stored = orthanc.file_by_sop_uid(sop_uid)
    assert stored is not None
    dataset = pydicom.dcmread(io.BytesIO(stored))
    assert dataset.SOPClassUID == ENCAPSULATED_PDF
    assert dataset.Modality == "DOC"
    pdf = PdfReader(io.BytesIO(dataset.EncapsulatedDocument.rstrip(b"\0")))
    return "\n".join(page.extract_text() for page in pdf.pages)


def expect_nav(page: Page, labels: list[str]) -> None:
    """The main navigation shows exactly these pages, in this order."""
    links = page.get_by_role("navigation", name="Main").get_by_role("link")
    expect(links).to_have_text(labels)


class TestRadiologistReportsFromTheBrowser:
    def test_assign_write_sign_amend_and_the_clinician_sees_it(
        self,
        gateway: str,
        orthanc: OrthancServer,
        browser: Browser,
        tmp_path: Path,
        artefacts: Path,
    ) -> None:
        study = write_study(tmp_path / "study", instances=4, series=2, rows=64, columns=64)
        contexts: list[BrowserContext] = []
        watch = RefusedCalls()

        try:
            # The clinician sends the study and sees only the uploader's pages.
            clin_context, clin = signed_in(browser, gateway, "clin", PASSWORD)
            contexts.append(clin_context)
            clin.on("response", watch)
            expect(clin.get_by_role("heading", name="Upload a study")).to_be_visible()
            expect_nav(clin, ["Upload", "My uploads", "Sessions"])
            clin.get_by_test_id("folder-input").set_input_files(tmp_path / "study")
            expect(clin.get_by_test_id("study-contents")).to_contain_text("2 series, 4 images")
            clin.get_by_role("button", name="Send this study").click()
            expect(clin.get_by_test_id("queue-state")).to_have_attribute(
                "data-state", "sent", timeout=60_000
            )
            clin.get_by_role("link", name="My uploads").click()
            expect(clin.get_by_test_id("report-status")).to_have_attribute(
                "data-status", "pending", timeout=60_000
            )
            # A typed address of another role's page: "not allowed", and nothing asked of
            # the API that it refuses.
            clin.goto(f"{gateway}/worklist")
            expect(clin.get_by_role("heading", name="Not allowed")).to_be_visible()
            assert_accessible(clin, "not allowed")
            clin.goto(f"{gateway}/admin/assignment")
            expect(clin.get_by_role("heading", name="Not allowed")).to_be_visible()
            clin.get_by_role("link", name="My uploads").click()
            expect(clin.get_by_test_id("report-status")).to_have_attribute("data-status", "pending")

            # The administrator sees the administration only, and assigns the study.
            boss_context, boss = signed_in(browser, gateway, "boss", PASSWORD)
            contexts.append(boss_context)
            boss.on("response", watch)
            expect(boss).to_have_url(re.compile(r"/admin/assignment$"))
            expect_nav(
                boss,
                [
                    "Assignment",
                    "Uploads",
                    "Users",
                    "Audit log",
                    "PACS targets",
                    "Statistics",
                    "Sessions",
                ],
            )
            waiting = boss.get_by_role("list", name="Unassigned studies").get_by_role("listitem")
            expect(waiting).to_have_count(1)
            expect(waiting).to_contain_text(FAMILY)
            expect(boss.get_by_label("Radiologist", exact=True)).to_contain_text("rad")
            boss.get_by_label("Modalities of rad").fill("ct, mr")
            boss.get_by_role("button", name="Save", exact=True).click()
            expect(boss.get_by_label("Modalities of rad")).to_have_value("CT, MR")
            boss.screenshot(path=artefacts / "assignment.png")
            assert_accessible(boss, "assignment")
            boss.get_by_role("link", name="Users").click()
            users = boss.get_by_test_id("user-row")
            expect(users).to_have_count(3)
            expect(boss.get_by_label("Role of rad", exact=True)).to_have_value("radiologist")
            expect(boss.get_by_label("Role of boss", exact=True)).to_have_value("admin")
            # A new account: its temporary password is shown once.
            boss.get_by_label("Username").fill("newdoc")
            boss.get_by_label("Role", exact=True).select_option("radiologist")
            boss.get_by_role("button", name="Create").click()
            expect(boss.get_by_test_id("temporary-password")).not_to_be_empty()
            expect(users).to_have_count(4)
            expect(boss.get_by_label("Role of newdoc", exact=True)).to_have_value("radiologist")
            # Another temporary password for them (asked first), shown in their row.
            boss.once("dialog", lambda dialog: dialog.accept())
            boss.get_by_role("button", name="New password for newdoc").click()
            expect(boss.get_by_test_id("temporary-password")).to_have_count(2)
            assert_accessible(boss, "users")
            boss.get_by_role("link", name="Uploads").click()
            expect(boss.get_by_text("Nothing needs attention.")).to_be_visible()
            assert_accessible(boss, "uploads needing attention")
            boss.get_by_role("link", name="Assignment").click()

            # The radiologist's worklist is empty; the administrator assigns the study, and it
            # appears without a reload (the live stream: the page polls only every 30 s).
            rad_context, rad = signed_in(browser, gateway, "rad", PASSWORD)
            contexts.append(rad_context)
            rad.on("response", watch)
            expect(rad.get_by_role("heading", name="Upload a study")).to_be_visible()
            expect_nav(rad, ["Worklist", "Upload", "My uploads", "Sessions"])
            rad.get_by_role("link", name="Worklist").click()
            expect(rad.get_by_role("status").filter(has_text="studies")).to_have_text("0 studies")
            rad.wait_for_timeout(1000)  # the stream opens (its ticket, then the connection)
            boss.get_by_role("button", name="Assign").click()
            expect(boss.get_by_text("Every study has its radiologist.")).to_be_visible()
            items = rad.get_by_test_id("worklist-item")
            expect(items).to_have_count(1, timeout=8_000)
            expect(items).to_have_attribute("data-status", "assigned")
            # The filters: a modality this study is not hides it, its own shows it.
            rad.get_by_label("Modality").fill("MR")
            expect(items).to_have_count(0)
            rad.get_by_label("Modality").fill("ct")
            expect(items).to_have_count(1)
            rad.get_by_label("Search").fill("nobody-by-this-name")
            expect(items).to_have_count(0)
            rad.get_by_label("Search").fill("")
            rad.screenshot(path=artefacts / "worklist.png")
            assert_accessible(rad, "worklist")
            items.first.get_by_role("link").click()

            expect(rad.get_by_test_id("study-pacs-confirmed")).to_have_text("PACS confirmed 4/4")
            expect(rad.get_by_test_id("study-patient")).to_contain_text(FAMILY)
            rad.get_by_label("Findings").fill("Small nodule in the right upper lobe.")
            rad.get_by_label("Impression").fill("Follow-up CT in 3 months.")
            expect(rad.get_by_test_id("draft-state")).to_have_attribute("data-state", "saved")
            rad.screenshot(path=artefacts / "report-editor.png")
            assert_accessible(rad, "report editor")
            # Offline, the radiologist goes on writing: the draft waits, and goes when the
            # network is back.
            # The service worker holds the app shell before the network goes.
            rad.evaluate("navigator.serviceWorker.ready.then(() => true)")
            rad_context.set_offline(True)
            rad.get_by_label("Findings").fill("Small nodule in the right upper lobe, 4 mm.")
            expect(rad.get_by_test_id("draft-state")).to_have_attribute("data-state", "offline")
            # A reload while still offline (the service worker serves the app): the draft kept
            # on this device is in the editor again, still waiting for the network.
            rad.reload()
            expect(rad.get_by_label("Findings")).to_have_value(
                "Small nodule in the right upper lobe, 4 mm."
            )
            expect(rad.get_by_label("Impression")).to_have_value("Follow-up CT in 3 months.")
            expect(rad.get_by_test_id("draft-state")).to_have_attribute("data-state", "offline")
            rad_context.set_offline(False)
            expect(rad.get_by_test_id("draft-state")).to_have_attribute("data-state", "saved")
            # Acknowledged by the gateway: nothing of it is left on the device.
            rad.wait_for_function(
                """() => new Promise((resolve) => {
                    const open = indexedDB.open("relaypacs");
                    open.onsuccess = () => {
                        const db = open.result;
                        const count = db.transaction("drafts").objectStore("drafts").count();
                        count.onsuccess = () => { db.close(); resolve(count.result === 0); };
                    };
                })"""
            )
            # The draft is the gateway's: a reload shows it again.
            rad.reload()
            expect(rad.get_by_label("Findings")).to_have_value(
                "Small nodule in the right upper lobe, 4 mm."
            )
            expect(rad.get_by_label("Impression")).to_have_value("Follow-up CT in 3 months.")
            rad.get_by_role("button", name="Sign the report").click()
            signed = rad.get_by_role("article", name="Signed report")
            expect(signed).to_contain_text("Small nodule in the right upper lobe, 4 mm.")
            expect(rad.get_by_test_id("report-state")).to_have_text("(Signed)")

            # The clinician's page shows it without a reload.
            expect(clin.get_by_test_id("report-status")).to_have_attribute(
                "data-status", "ready", timeout=30_000
            )
            clin.get_by_role("button", name="View report").click()
            expect(clin.get_by_role("article", name="Report")).to_contain_text(
                "Small nodule in the right upper lobe, 4 mm."
            )

            # An amendment, with its reason; the history keeps both versions.
            rad.get_by_role("button", name="Amend").click()
            rad.get_by_label("Impression").fill("Follow-up CT in 6 weeks.")
            rad.get_by_label("Reason for the amendment").fill("Interval corrected")
            rad.get_by_role("button", name="Sign the amendment").click()
            expect(rad.get_by_test_id("report-state")).to_have_text("(Amended)")
            versions = rad.get_by_role("list", name="Versions").get_by_role("listitem")
            expect(versions).to_have_count(2)
            expect(versions.first).to_contain_text("Version 2")
            expect(versions.first).to_contain_text("amended: Interval corrected")
            expect(versions.nth(1)).to_contain_text("first signature")
            rad.screenshot(path=artefacts / "report-signed.png")
            assert_accessible(rad, "signed report, history")
            with rad.expect_download() as pdf:
                rad.get_by_role("button", name="Download PDF").click()
            assert FAMILY not in pdf.value.suggested_filename
            assert Path(pdf.value.path()).read_bytes().startswith(b"%PDF")
            # A tablet held upright: nothing wider than the screen.
            rad.set_viewport_size({"width": 768, "height": 1024})
            width = rad.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 768, width

            expect(clin.get_by_test_id("report-status")).to_have_attribute(
                "data-status", "amended", timeout=30_000
            )
            # The audit log: the signature is found, and exported as JSON lines.
            boss.get_by_role("link", name="Audit log").click()
            boss.get_by_label("Action").fill("report.sign")
            rows = boss.get_by_test_id("audit-row")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("success")
            assert_accessible(boss, "audit log")
            with boss.expect_download() as download:
                boss.get_by_role("button", name="Export JSON lines").click()
            assert download.value.suggested_filename == "audit.jsonl"
            exported = [
                json.loads(line)
                for line in Path(download.value.path()).read_text(encoding="utf-8").splitlines()
            ]
            assert [record["action"] for record in exported] == ["report.sign"]
            assert watch.calls == []
            # The study the radiologist read is the one the PACS holds, and the signed report is
            # written back into it: an Encapsulated PDF instance whose PDF holds the findings
            # and the amended impression (the latest version; the first may be there too).
            deadline = time.monotonic() + 60
            while True:
                extra = orthanc.sop_instance_uids(study.study_uid) - set(study.sop_uids)
                documents = [_encapsulated_pdf(orthanc, uid) for uid in extra]
                if any("Follow-up CT in 6 weeks." in text for text in documents):
                    break
                assert time.monotonic() < deadline, f"no report in the PACS: {documents}"
                time.sleep(0.5)
            assert set(study.sop_uids) <= orthanc.sop_instance_uids(study.study_uid)
            assert len(extra) <= 2
            assert all("Small nodule in the right upper lobe, 4 mm." in t for t in documents)
            rad.reload()
            expect(rad.get_by_role("article", name="Signed report")).to_contain_text(
                "stored in the PACS"
            )
        finally:
            for context in contexts:
                context.close()
