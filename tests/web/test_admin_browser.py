"""The administrator's console end to end, in headless Chromium against a real gateway, a real
Orthanc and a real SMTP server (aiosmtpd): the administrator turns the automatic assignment on
(with the keyboard); Orthanc stops; a clinician's study waits; the PACS targets page says the
PACS is not reachable and one study waits; Orthanc starts again; the administrator presses
retry and the study is delivered ("PACS confirmed 4/4" on the clinician's page, a last delivery
on the targets page); the rule assigned it to the radiologist, who signs; the report-ready email
reaches the clinician's mailbox without patient data in its subject. The administrator sees
the clinician's sessions and ends one (the clinician must sign in again), and their own
sessions. axe-core on every new page; a clinician who types the targets page's address sees
"not allowed", and the API was asked nothing it refuses."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from relaypacs.devtools.synth import DEFAULT_PATIENT, write_study
from tests.gateway import create_user, run_gateway
from tests.pacs import OrthancServer, run_orthanc
from tests.servers import free_port
from tests.web.conftest import RefusedCalls, assert_accessible, signed_in

PASSWORD = "admin-e2e-password-1"
FAMILY = DEFAULT_PATIENT.name.split("^")[0]
CLINICIAN_EMAIL = "clin@hospital.example"


class Mailbox:
    """What the SMTP server (aiosmtpd, in its own thread) received."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for rcpt, m in self.messages if address in rcpt]


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def gateway(
    tmp_path: Path, orthanc: OrthancServer, web_dist: Path, mailbox: tuple[Mailbox, int]
) -> Iterator[str]:
    data_dir = tmp_path / "data"
    env = {
        "RELAYPACS_PACS_URL": orthanc.dicomweb_url,
        "RELAYPACS_PACS_USERNAME": orthanc.auth[0],
        "RELAYPACS_PACS_PASSWORD": orthanc.auth[1],
        "RELAYPACS_PACS_PROFILE": "orthanc",
        "RELAYPACS_WEB_DIR": str(web_dist),
        # TOTP is the clinician test's subject (test_browser.py): here the console is.
        "RELAYPACS_TOTP_REQUIRED_ROLES": "[]",
        "RELAYPACS_FORWARD_POLL_SECONDS": "0.2",
        # A study that failed waits for the administrator's retry, not for its own.
        "RELAYPACS_FORWARD_RETRY_DELAYS": "[3600]",
        "RELAYPACS_FORWARD_RETRY_INTERVAL": "3600",
        # Off by configuration: the administrator turns it on in the app.
        "RELAYPACS_REPORT_AUTO_ASSIGN": "false",
        "RELAYPACS_SMTP_HOST": "127.0.0.1",
        "RELAYPACS_SMTP_PORT": str(mailbox[1]),
        "RELAYPACS_SMTP_SECURITY": "none",
    }
    create_user(data_dir, "clin", PASSWORD, env=env, email=CLINICIAN_EMAIL)
    create_user(data_dir, "rad", PASSWORD, role="radiologist", env=env)
    create_user(data_dir, "boss", PASSWORD, role="admin", env=env)
    with run_gateway(data_dir, env) as base_url:
        yield base_url


def tab_to(page: Page, target: Locator, *, presses: int = 60) -> None:
    """Press Tab until `target` has the focus: it is reachable with the keyboard alone."""
    handle = target.element_handle()
    assert handle is not None
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("(el) => document.activeElement === el", handle):
            return
    raise AssertionError(f"{target} is not reachable with Tab")


def check_until(page: Page, shown: Locator, text: str, *, tries: int = 40) -> None:
    """Press "Check now" (with the keyboard) until `shown` says `text`: the targets page probes
    each PACS when asked."""
    button = page.get_by_role("button", name=re.compile("^(Check now|Checking…)$"))
    expect(button).to_have_text("Check now")
    tab_to(page, button)
    for _ in range(tries):
        if text in (shown.text_content() or ""):
            return
        expect(button).to_have_text("Check now")
        button.focus()
        page.keyboard.press("Enter")
        page.wait_for_timeout(500)
    expect(shown).to_contain_text(text)


class TestAdministratorConsole:
    def test_retry_after_the_pacs_is_back_rule_email_and_sessions(
        self,
        gateway: str,
        orthanc: OrthancServer,
        mailbox: tuple[Mailbox, int],
        browser: Browser,
        tmp_path: Path,
        artefacts: Path,
    ) -> None:
        study = write_study(tmp_path / "study", instances=4, series=2, rows=64, columns=64)
        contexts: list[BrowserContext] = []
        watch = RefusedCalls()

        try:
            # The administrator turns the automatic assignment on, with the keyboard.
            boss_context, boss = signed_in(browser, gateway, "boss", PASSWORD)
            contexts.append(boss_context)
            boss.on("response", watch)
            expect(boss).to_have_url(re.compile(r"/admin/assignment$"))
            summary = boss.get_by_test_id("rule-summary")
            expect(summary).to_have_attribute("data-enabled", "false")
            expect(summary).to_contain_text("configuration")
            rule = boss.get_by_label("Assign new studies automatically")
            tab_to(boss, rule)
            boss.keyboard.press("Space")
            expect(rule).to_be_checked()
            expect(
                boss.get_by_label("the radiologists who read the study's modality")
            ).to_be_checked()
            tab_to(boss, boss.get_by_role("button", name="Save the rule"))
            boss.keyboard.press("Enter")
            expect(boss.get_by_role("status").filter(has_text="Rule saved")).to_be_visible()
            expect(summary).to_have_attribute("data-enabled", "true")
            expect(summary).to_contain_text("Set by boss")
            boss.screenshot(path=artefacts / "assignment-rule.png")
            assert_accessible(boss, "assignment with its rule")

            # The PACS goes down; the clinician's study is accepted and waits.
            orthanc.stop()
            clin_context, clin = signed_in(browser, gateway, "clin", PASSWORD)
            contexts.append(clin_context)
            clin.on("response", watch)
            clin.get_by_test_id("folder-input").set_input_files(tmp_path / "study")
            expect(clin.get_by_test_id("study-contents")).to_contain_text("2 series, 4 images")
            clin.get_by_role("button", name="Send this study").click()
            expect(clin.get_by_test_id("queue-state")).to_have_attribute(
                "data-state", "sent", timeout=60_000
            )
            # The targets page is not the clinician's: "not allowed", nothing asked.
            clin.goto(f"{gateway}/admin/targets")
            expect(clin.get_by_role("heading", name="Not allowed")).to_be_visible()
            clin.get_by_role("link", name="My uploads").click()
            expect(clin.get_by_test_id("upload-status")).to_have_attribute(
                "data-status", re.compile("^(queued|forwarding)$")
            )

            # The PACS targets page: not reachable, one study waiting after a failed attempt.
            boss.get_by_role("link", name="PACS targets").click()
            target = boss.get_by_test_id("target")
            expect(target).to_have_count(1)
            expect(target).to_have_attribute("data-name", "pacs")
            check_until(boss, boss.get_by_test_id("target-queue"), "1 (1 after a failed attempt)")
            expect(target).to_have_attribute("data-state", "down")
            expect(boss.get_by_test_id("target-reachable")).to_contain_text("No: ")
            expect(boss.get_by_test_id("target-last-delivery")).to_have_text("never")
            expect(target).to_contain_text("Last error")
            assert FAMILY not in (target.text_content() or "")
            boss.screenshot(path=artefacts / "targets-down.png")
            assert_accessible(boss, "PACS targets, one down")
            # A tablet held upright: nothing wider than the screen.
            boss.set_viewport_size({"width": 768, "height": 1024})
            width = boss.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 768, width
            boss.set_viewport_size({"width": 1024, "height": 768})

            # The uploads needing attention: this one, with the PACS's last answer.
            boss.get_by_role("link", name="Uploads").click()
            waiting = boss.get_by_test_id("attention-item")
            expect(waiting).to_have_count(1)
            expect(waiting).to_contain_text("Waiting to retry (1 failed attempt)")
            expect(waiting).to_contain_text("Last PACS answer:")
            assert_accessible(boss, "uploads needing attention, one waiting")

            # The PACS is back: the targets page says so; the study still waits (its next
            # attempt is an hour away) until the administrator retries it.
            orthanc.start()
            boss.get_by_role("link", name="PACS targets").click()
            check_until(boss, boss.get_by_test_id("target-reachable"), "Yes")
            expect(boss.get_by_test_id("target-queue")).to_contain_text("1")
            boss.get_by_role("link", name="Uploads").click()
            retry = waiting.get_by_role("button", name="Retry")
            tab_to(boss, retry)
            boss.keyboard.press("Enter")
            expect(clin.get_by_test_id("pacs-confirmed")).to_contain_text(
                "PACS confirmed 4/4", timeout=60_000
            )
            expect(clin.get_by_test_id("upload-status")).to_have_attribute(
                "data-status", "delivered"
            )
            expect(boss.get_by_text("Nothing needs attention.")).to_be_visible()
            boss.get_by_role("link", name="PACS targets").click()
            check_until(boss, boss.get_by_test_id("target-queue"), "0")
            expect(boss.get_by_test_id("target")).to_have_attribute("data-state", "ok")
            expect(boss.get_by_test_id("target-last-delivery")).not_to_have_text("never")
            boss.screenshot(path=artefacts / "targets-healthy.png")
            assert_accessible(boss, "PACS targets, healthy")
            assert orthanc.sop_instance_uids(study.study_uid) == set(study.sop_uids)

            # The rule assigned the study to the radiologist, who signs the report.
            rad_context, rad = signed_in(browser, gateway, "rad", PASSWORD)
            contexts.append(rad_context)
            rad.on("response", watch)
            rad.get_by_role("link", name="Worklist").click()
            items = rad.get_by_test_id("worklist-item")
            expect(items).to_have_count(1)
            expect(items).to_have_attribute("data-status", "assigned")
            items.first.get_by_role("link").click()
            rad.get_by_label("Findings").fill("No acute abnormality.")
            rad.get_by_label("Impression").fill("Normal study.")
            expect(rad.get_by_test_id("draft-state")).to_have_attribute("data-state", "saved")
            rad.get_by_role("button", name="Sign the report").click()
            expect(rad.get_by_test_id("report-state")).to_have_text("(Signed)")
            expect(clin.get_by_test_id("report-status")).to_have_attribute(
                "data-status", "ready", timeout=30_000
            )

            # The report-ready email reaches the clinician's mailbox, without patient data.
            deadline = time.monotonic() + 30
            while not mailbox[0].to(CLINICIAN_EMAIL) and time.monotonic() < deadline:
                time.sleep(0.1)
            mails = mailbox[0].to(CLINICIAN_EMAIL)
            assert len(mails) == 1
            assert FAMILY.lower() not in str(mails[0]["Subject"]).lower()
            assert "report" in str(mails[0]["Subject"]).lower()

            # The clinician's sessions, seen and ended by the administrator.
            boss.get_by_role("link", name="Users").click()
            toggle = boss.get_by_role("button", name="Sessions of clin")
            tab_to(boss, toggle)
            boss.keyboard.press("Enter")
            expect(toggle).to_have_attribute("aria-expanded", "true")
            sessions = boss.get_by_role("list", name="Session list of clin").get_by_test_id(
                "session"
            )
            expect(sessions).to_have_count(1)
            expect(sessions).to_contain_text("Chrome on Linux")
            assert_accessible(boss, "a user's sessions")
            clin.remove_listener("response", watch)  # its next calls are refused: the point
            sessions.first.get_by_role("button", name=re.compile("^End the session")).click()
            expect(boss.get_by_text("No session is open.")).to_be_visible()
            clin.reload()
            expect(clin).to_have_url(re.compile(r"/sign-in$"))

            # The administrator's own sessions: this one, marked.
            boss.get_by_role("link", name="Sessions", exact=True).click()
            own = boss.get_by_role("list", name="Your sessions").get_by_test_id("session")
            expect(own).to_have_count(1)
            expect(own).to_have_attribute("data-current", "true")
            expect(own).to_contain_text("this device")
            boss.screenshot(path=artefacts / "own-sessions.png")
            assert_accessible(boss, "own sessions")
            assert watch.calls == []
        finally:
            for context in contexts:
                context.close()
