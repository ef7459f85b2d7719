"""The web app against the CLI: `python -m bench.web_upload [--instances 300] [--runs 1]`.

One gateway (`relaypacs serve`: SQLite, filesystem store, no PACS: the ingest is measured, as
in bench.gateway), one study (a 300-instance CT-like study of 512 x 512 images, ~150 MB,
generated once into bench/.work/), two uploads of it by two clinicians: `relaypacs upload`
(process start to exit), and the web app in headless Chromium (Debian's chromium, built app
served by the same gateway), from the folder being picked (headers read on the device) to the
study accepted by the gateway (`complete` answered). Prints both throughputs, their ratio
(goal: the app at least 0.8x the CLI) and the longest main-thread task of the page during the
upload (PerformanceObserver `longtask`; goal: none over 200 ms).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from relaypacs.devtools.synth import write_study
from tests.gateway import REPO, create_user, relaypacs_command, run_gateway, subprocess_env

PASSWORD = "bench-web-upload-password"
WORK = REPO / "bench" / ".work"
LONGTASKS = """
performance.setResourceTimingBufferSize(100000);
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longtasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""


def study_dir(instances: int) -> tuple[Path, int]:
    directory = WORK / f"web-study-{instances}"
    marker = directory / ".complete"
    if not marker.exists():
        write_study(directory / "study", instances=instances, series=3, nested=True, seed=7)
        marker.touch()
    files = [p for p in (directory / "study").rglob("*") if p.is_file()]
    return directory / "study", sum(p.stat().st_size for p in files)


def cli_upload(base_url: str, study: Path, scratch: Path) -> float:
    state = scratch / "cli-state"
    state.mkdir(mode=0o700)
    env = subprocess_env(
        {
            "RELAYPACS_STATE_DIR": str(state),
            "XDG_STATE_HOME": str(state / "xdg-state"),
            "XDG_CONFIG_HOME": str(state / "xdg-config"),
            "RELAYPACS_SERVER": base_url,
            "RELAYPACS_USERNAME": "cli",
            "RELAYPACS_PASSWORD": PASSWORD,
        }
    )
    started = time.perf_counter()
    done = subprocess.run(
        [*relaypacs_command(), "upload", str(study), "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"relaypacs upload exited {done.returncode}: {done.stderr[-800:]}")
    report = json.loads(done.stdout[done.stdout.index("{") :])
    print("CLI phases (s):", report.get("timings"))
    return elapsed


def web_upload(base_url: str, study: Path) -> tuple[float, list[float]]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            page = browser.new_context().new_page()
            page.add_init_script(LONGTASKS)
            page.goto(base_url)
            page.get_by_label("Username").fill("web")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Upload a study")).to_be_visible()
            page.evaluate("navigator.serviceWorker.ready.then(() => true)")
            page.evaluate("window.__longtasks = []")
            started = time.perf_counter()
            page.get_by_test_id("folder-input").set_input_files(study)
            page.get_by_role("button", name="Send this study").click(timeout=600_000)
            expect(page.get_by_test_id("queue-state")).to_have_attribute(
                "data-state", "sent", timeout=1_800_000
            )
            elapsed = time.perf_counter() - started
            longtasks: list[float] = page.evaluate("window.__longtasks")
            marks: dict[str, float] = page.evaluate(
                "Object.fromEntries(performance.getEntriesByType('mark')"
                ".filter((m) => m.name.startsWith('relaypacs:'))"
                ".map((m) => [m.name.slice(10), Math.round(m.startTime)]))"
            )
            print("web app phases (ms since the page loaded):", marks)
            chunks: dict[str, float] = page.evaluate(
                """(() => {
                    const puts = performance.getEntriesByType("resource")
                        .filter((e) => e.name.includes("/chunks/")
                            || e.name.endsWith("/chunks:batch"));
                    const mean = (f) => puts.reduce((s, e) => s + f(e), 0) / (puts.length || 1);
                    const first = Math.min(...puts.map((e) => e.startTime));
                    const last = Math.max(...puts.map((e) => e.responseEnd));
                    return {
                        count: puts.length,
                        batches: puts.filter((e) => e.name.endsWith("/chunks:batch")).length,
                        span_ms: Math.round(last - first),
                        mean_in_flight:
                            Math.round(10 * puts.reduce((s, e) => s + e.duration, 0)
                                / (last - first || 1)) / 10,
                        mean_total_ms: Math.round(mean((e) => e.duration)),
                        mean_queued_ms: Math.round(mean((e) => e.requestStart - e.startTime)),
                        mean_sent_to_answer_ms: Math.round(
                            mean((e) => e.responseStart - e.requestStart)),
                    };
                })()"""
            )
            print("web app chunk requests (PUTs and batches; resource timing):", chunks)
            return elapsed, longtasks
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    subprocess.run([REPO / "scripts" / "web.sh", "build"], cwd=REPO, check=True)
    study, total = study_dir(args.instances)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as scratch_name:
        scratch = Path(scratch_name)
        data_dir = scratch / "data"
        env = {
            "RELAYPACS_STORAGE": "fs",
            "RELAYPACS_LOG_LEVEL": "warning",
            "RELAYPACS_WEB_DIR": str(REPO / "web" / "dist"),
        }
        for user in ("cli", "web"):
            create_user(data_dir, user, PASSWORD, env=env)
        with run_gateway(data_dir, env, log_path=scratch / "gateway.log") as base_url:
            cli_seconds = cli_upload(base_url, study, scratch)
            web_seconds, longtasks = web_upload(base_url, study)
    mb = total / 1e6
    figures = {
        "instances": args.instances,
        "megabytes": round(mb, 1),
        "cli_seconds": round(cli_seconds, 2),
        "cli_mb_per_s": round(mb / cli_seconds, 1),
        "web_seconds": round(web_seconds, 2),
        "web_mb_per_s": round(mb / web_seconds, 1),
        "web_to_cli": round(cli_seconds / web_seconds, 2),
        "longest_task_ms": round(max(longtasks, default=0.0)),
        "tasks_over_200ms": sum(1 for d in longtasks if d > 200),
    }
    print(f"study: {args.instances} instances, {mb:.1f} MB")
    print(f"CLI      {cli_seconds:7.2f} s  {figures['cli_mb_per_s']:6.1f} MB/s")
    print(f"web app  {web_seconds:7.2f} s  {figures['web_mb_per_s']:6.1f} MB/s")
    ratio_ok = figures["web_to_cli"] >= 0.8
    tasks_ok = figures["tasks_over_200ms"] == 0
    verdict = "met" if ratio_ok else "MISSED"
    print(f"web/CLI throughput {figures['web_to_cli']:.2f}x (goal >= 0.8x): {verdict}")
    print(
        f"longest main-thread task {figures['longest_task_ms']} ms, "
        f"{figures['tasks_over_200ms']} over 200 ms (goal: none): {'met' if tasks_ok else 'MISSED'}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ratio_ok and tasks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
