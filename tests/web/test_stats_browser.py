"""The administrator's statistics page end to end, in headless Chromium against a real gateway
and a real Orthanc: a clinician's studies go through the API (two delivered, one with a file
that is not DICOM, one refused whole); the administrator opens Statistics (the last 30 days by
default) and the figures shown (totals, the tables behind each chart, the failure reasons with
their sentences, the per-target row) are the API's own; each table opens with the keyboard; an
empty range says so; a wrong range is said before anything is asked; axe-core finds no serious
or critical violation, at 1024 and 768 px; a clinician who types the page's address sees
"not allowed", and the API was asked nothing it refuses."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Response, Route, expect

from tests.api.uploading import API, Study, chunk_url, chunks_of, content_md5, make_study
from tests.gateway import create_user, run_gateway
from tests.pacs import OrthancServer, run_orthanc
from tests.web.conftest import RefusedCalls, assert_accessible, signed_in
from tests.web.test_admin_browser import tab_to

PASSWORD = "admin-e2e-password-1"


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
        "RELAYPACS_TOTP_REQUIRED_ROLES": "[]",
        "RELAYPACS_FORWARD_POLL_SECONDS": "0.2",
    }
    create_user(data_dir, "clin", PASSWORD, env=env)
    create_user(data_dir, "boss", PASSWORD, role="admin", env=env)
    with run_gateway(data_dir, env) as base_url:
        yield base_url


@contextlib.contextmanager
def api_client(base_url: str, username: str) -> Iterator[httpx.Client]:
    """The API, signed in as `username`."""
    with httpx.Client(base_url=base_url, timeout=60) as http:
        body = {"username": username, "password": PASSWORD}
        login = http.post(f"{API}/auth/login", json=body)
        assert login.status_code == 200, login.text
        http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        yield http


def upload(http: httpx.Client, study: Study) -> httpx.Response:
    """The upload protocol: init, every chunk with its Content-MD5, complete."""
    init = http.post(f"{API}/uploads", json=study.manifest())
    assert init.status_code == 201, init.text
    upload_id = init.json()["id"]
    for file_index, data in enumerate(study.files):
        for chunk_index, chunk in enumerate(chunks_of(data)):
            put = http.put(
                chunk_url(upload_id, file_index, chunk_index),
                content=chunk,
                headers={"Content-MD5": content_md5(chunk)},
            )
            assert put.status_code == 200, put.text
    return http.post(f"{API}/uploads/{upload_id}/complete")


def wait_delivered(http: httpx.Client, upload_id: str) -> None:
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = http.get(f"{API}/uploads/{upload_id}").json()["status"]
        if status == "delivered":
            return
        time.sleep(0.2)
    raise AssertionError(f"upload {upload_id} is {status}, not delivered")


def added(days: list[dict[str, Any]], key: str) -> int:
    return sum(int(day[key]) for day in days)


class TestStatisticsPage:
    def test_the_figures_shown_are_the_apis(
        self, gateway: str, orthanc: OrthancServer, browser: Browser, artefacts: Path
    ) -> None:
        # The clinician's uploads: two delivered (one with a file that is not DICOM), one
        # refused whole (its only file is not DICOM).
        not_dicom = b"%PDF-1.7 this is not dicom" * 40
        with api_client(gateway, "clin") as clin_http:
            first = make_study(3)
            mixed = make_study(2)
            mixed = Study(mixed.uid, [*mixed.files, not_dicom], [*mixed.names, "report.pdf"])
            refused = Study(make_study(1).uid, [not_dicom], ["letter.pdf"])
            delivered = []
            for study in (first, mixed):
                done = upload(clin_http, study)
                assert done.status_code in (200, 202), done.text
                delivered.append(done.json()["id"])
            rejected = upload(clin_http, refused)
            assert rejected.status_code == 422, rejected.text
            assert rejected.json()["error"]["code"] == "upload_rejected"
            for upload_id in delivered:
                wait_delivered(clin_http, upload_id)

        today = dt.datetime.now(dt.UTC).date()
        with api_client(gateway, "boss") as boss_http:
            answer = boss_http.get(
                f"{API}/admin/stats",
                params={"from": str(today - dt.timedelta(days=29)), "to": str(today)},
            )
            assert answer.status_code == 200, answer.text
        days: list[dict[str, Any]] = answer.json()["days"]
        assert len(days) == 30
        this_day = days[-1]
        assert this_day["day"] == str(today)
        # The page is judged against the API, and the API against what was sent.
        assert added(days, "uploads") == 3
        assert added(days, "delivered") == 2
        assert this_day["failures"].get("not_dicom") == 2
        assert this_day["latency_p50_seconds"] is not None
        failures: dict[str, int] = {}
        for day in days:
            for code, count in day["failures"].items():
                failures[code] = failures.get(code, 0) + count

        contexts: list[BrowserContext] = []
        watch = RefusedCalls()

        stats_calls: list[str] = []

        def count_stats(response: Response) -> None:
            if "/api/v1/admin/stats" in response.url:
                stats_calls.append(response.url)

        try:
            boss_context, boss = signed_in(browser, gateway, "boss", PASSWORD)
            contexts.append(boss_context)
            boss.on("response", watch)
            boss.on("response", count_stats)
            link = boss.get_by_role("link", name="Statistics")
            tab_to(boss, link)
            boss.keyboard.press("Enter")
            expect(boss).to_have_url(re.compile(r"/admin/stats$"))
            expect(boss.get_by_role("heading", name="Statistics", level=1)).to_be_visible()
            expect(boss.get_by_label("From (UTC day)")).to_have_value(days[0]["day"])
            expect(boss.get_by_label("To (UTC day)")).to_have_value(str(today))

            # The totals of the range.
            expect(boss.get_by_test_id("total-uploads")).to_have_text(str(added(days, "uploads")))
            expect(boss.get_by_test_id("total-instances")).to_have_text(
                str(added(days, "instances"))
            )
            expect(boss.get_by_test_id("total-delivered")).to_have_text(
                str(added(days, "delivered"))
            )
            expect(boss.get_by_test_id("total-refused")).to_have_text(str(sum(failures.values())))

            # Each chart is drawn (a canvas), named by its summary, and its table opens with the
            # keyboard and holds the API's figures for the day.
            charts = boss.get_by_role("img")
            expect(charts).to_have_count(3)
            for index in range(3):
                expect(charts.nth(index).locator("canvas")).to_have_count(1)
            expect(charts.first).to_have_attribute(
                "aria-label",
                re.compile(rf"^Uploads per day, 30 days.*highest {this_day['uploads']}"),
            )
            for summary, table in (
                ("Table: uploads per day", "uploads-table"),
                ("Table: bytes per day", "bytes-table"),
                ("Table: delivery latency per day", "latency-table"),
            ):
                toggle = boss.locator("summary", has_text=summary)
                tab_to(boss, toggle)
                boss.keyboard.press("Enter")
                expect(boss.get_by_test_id(table)).to_be_visible()
            row = f"tr[data-day='{today}'] td"
            uploads_row = boss.get_by_test_id("uploads-table").locator(row)
            expect(uploads_row.nth(0)).to_have_attribute("data-value", str(this_day["uploads"]))
            expect(uploads_row.nth(1)).to_have_attribute("data-value", str(this_day["delivered"]))
            bytes_cell = boss.get_by_test_id("bytes-table").locator(row).first
            expect(bytes_cell).to_have_attribute("data-value", str(this_day["bytes"]))
            latency_row = boss.get_by_test_id("latency-table").locator(row)
            assert float(latency_row.nth(0).get_attribute("data-value") or "nan") == pytest.approx(
                this_day["latency_p50_seconds"]
            )
            assert float(latency_row.nth(1).get_attribute("data-value") or "nan") == pytest.approx(
                this_day["latency_p95_seconds"]
            )
            yesterday = boss.get_by_test_id("uploads-table").locator(
                f"tr[data-day='{today - dt.timedelta(days=1)}'] td"
            )
            expect(yesterday.first).to_have_attribute("data-value", str(days[-2]["uploads"]))

            # The failure reasons: the API's codes and counts, with the app's sentence.
            reasons = boss.get_by_test_id("failures-table").locator("tbody tr")
            expect(reasons).to_have_count(len(failures))
            for code, count in failures.items():
                reason = boss.get_by_test_id("failures-table").locator(f"tr[data-code='{code}']")
                expect(reason).to_have_attribute("data-count", str(count))
            expect(boss.locator("[data-code='not_dicom']")).to_contain_text("Not a DICOM file.")

            # Per target: the one PACS, its uploads and deliveries as the API counts them.
            target_rows: dict[str, dict[str, int]] = {}
            for day in days:
                for figures in day["targets"]:
                    into = target_rows.setdefault(figures["target"], {"uploads": 0, "delivered": 0})
                    into["uploads"] += figures["uploads"]
                    into["delivered"] += figures["delivered"]
            assert list(target_rows) == ["pacs"]
            pacs = boss.get_by_test_id("targets-table").locator("tr[data-target='pacs']")
            expect(pacs.get_by_test_id("target-uploads")).to_have_text(
                str(target_rows["pacs"]["uploads"])
            )
            expect(pacs.get_by_test_id("target-delivered")).to_have_text(
                str(target_rows["pacs"]["delivered"])
            )
            boss.screenshot(path=artefacts / "statistics.png", full_page=True)
            assert_accessible(boss, "statistics")

            # A tablet held upright: nothing wider than the screen, still accessible.
            boss.set_viewport_size({"width": 768, "height": 1024})
            boss.wait_for_timeout(300)  # the charts follow their box's new width
            width = boss.evaluate("document.scrollingElement.scrollWidth")
            assert width <= 768, width
            boss.screenshot(path=artefacts / "statistics-768.png", full_page=True)
            assert_accessible(boss, "statistics on a 768 px tablet")
            boss.set_viewport_size({"width": 1024, "height": 768})

            # A range with nothing in it says so.
            boss.get_by_label("From (UTC day)").fill("2020-01-01")
            boss.get_by_label("To (UTC day)").fill("2020-01-07")
            expect(boss.get_by_text("No upload was started in these days.")).to_be_visible()
            expect(boss.get_by_test_id("total-uploads")).to_have_text("0")
            expect(boss.get_by_text("No file was refused in these days.")).to_be_visible()
            assert_accessible(boss, "statistics, an empty range")

            # A wrong range is said, and not asked.
            asked = len(stats_calls)
            boss.get_by_label("From (UTC day)").fill("2020-02-01")
            expect(boss.get_by_role("alert")).to_have_text("The start must not be after the end.")
            expect(boss.get_by_test_id("stats-totals")).to_have_count(0)
            assert len(stats_calls) == asked
            assert_accessible(boss, "statistics, a wrong range")

            # The gateway cannot answer (a fault injected in the browser): the error's
            # sentence, and no figure.
            def busy(route: Route) -> None:
                route.fulfill(
                    status=503,
                    json={"error": {"code": "database_busy", "message": "busy"}},
                    headers={"Retry-After": "1"},
                )

            boss.route("**/api/v1/admin/stats?*", busy)
            boss.get_by_label("From (UTC day)").fill("2020-01-02")
            expect(boss.get_by_role("alert")).to_have_text(
                "The gateway is busy; try again shortly.", timeout=15_000
            )
            expect(boss.get_by_test_id("stats-totals")).to_have_count(0)
            assert_accessible(boss, "statistics, the gateway busy")
            boss.unroute("**/api/v1/admin/stats?*")
            boss.get_by_role("button", name="Last 7 days").click()
            expect(boss.get_by_test_id("total-uploads")).to_have_text(str(added(days, "uploads")))

            # The page is not the clinician's: "not allowed", nothing refused asked.
            clin_context, clin = signed_in(browser, gateway, "clin", PASSWORD)
            contexts.append(clin_context)
            clin.on("response", watch)
            clin.goto(f"{gateway}/admin/stats")
            expect(clin.get_by_role("heading", name="Not allowed")).to_be_visible()
            expect(clin.get_by_role("link", name="Statistics")).to_have_count(0)
            assert_accessible(clin, "statistics, not allowed")
            assert watch.calls == []
        finally:
            for context in contexts:
                context.close()
