"""bench.load's wrk generator: a real wrk run with bench/wrk_kind.lua against a small local
HTTP server, whose done() line is parsed (requests, errors, latency percentiles), and the
merge of two runs' percentile grids into the latency of all their requests."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.wrk import WrkResult, ensure_wrk, merged_percentile_ms, parse_output, run_together


class _Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paths: Counter[str] = Counter()
        self.authorization: Counter[str] = Counter()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    seen: _Seen

    def do_GET(self) -> None:
        with self.seen.lock:
            self.seen.paths[self.path] += 1
            self.seen.authorization[self.headers.get("Authorization", "")] += 1
        body = b'{"ok": true}' if self.path.startswith("/ok/") else b'{"code": "not_found"}'
        self.send_response(200 if self.path.startswith("/ok/") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, _Seen]]:
    seen = _Seen()
    handler = type("Handler", (_Handler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_a_wrk_run_per_kind_reports_its_requests_errors_and_latency(
    server: tuple[str, _Seen],
) -> None:
    base, seen = server
    wrk = ensure_wrk(log=lambda _line: None)
    runs = run_together(
        wrk,
        base,
        {"ok": ["/ok/1", "/ok/2"], "missing": ["/missing"]},
        connections={"ok": 2, "missing": 1},
        seconds=1,
        token="bench-token",
        timeout_s=5,
    )
    ok, missing = runs["ok"], runs["missing"]
    # Every request carried the token, and the paths were taken in turn.
    assert set(seen.authorization) == {"Bearer bench-token"}
    assert seen.paths["/ok/1"] > 0
    assert seen.paths["/ok/2"] > 0
    assert abs(seen.paths["/ok/1"] - seen.paths["/ok/2"]) <= 2  # one connection's turn apart
    # wrk's counts are what the server answered (it may have answered a few in flight at
    # the end, which wrk did not wait for).
    assert 0 < ok.requests <= seen.paths["/ok/1"] + seen.paths["/ok/2"]
    assert 0 < missing.requests <= seen.paths["/missing"]
    assert ok.error_count == 0
    assert missing.errors["status"] == missing.requests  # every 404 is an error
    assert 0.9 < ok.duration_s < 3
    for run in (ok, missing):
        values = [v for _, v in run.percentiles_us]
        assert values == sorted(values)
        assert values[0] > 0
        assert run.percentiles_us[-1] == (100.0, run.latency_us["max"])
        assert run.latency_us["min"] <= run.percentile_ms(50) * 1000 <= run.latency_us["max"]
    merged = merged_percentile_ms([ok, missing], 50)
    low, high = sorted((ok.percentile_ms(50), missing.percentile_ms(50)))
    assert low <= merged <= high


def _run(requests: int, values_ms: list[float]) -> WrkResult:
    grid = [(float(p), int(values_ms[p - 1] * 1000)) for p in range(1, 101)]
    return WrkResult(requests, 1.0, {}, {"max": grid[-1][1]}, grid)


def test_merged_percentiles_weigh_each_run_by_its_requests() -> None:
    fast = _run(300, [float(p) for p in range(1, 101)])  # 1 ms at P1 ... 100 ms at P100
    slow = _run(100, [1000.0] * 100)  # every request 1 s
    # Half of the 400 requests: 200 of the fast run's 300, its P66.7, so its P67 on the grid.
    assert merged_percentile_ms([fast, slow], 50) == 67.0
    # The fast run is 75 % of them: P75 is its slowest, P95 is the slow run's.
    assert merged_percentile_ms([fast, slow], 75) == 100.0
    assert merged_percentile_ms([fast, slow], 95) == 1000.0
    assert merged_percentile_ms([fast], 95) == fast.percentile_ms(95) == 95.0
    assert merged_percentile_ms([], 95) == 0.0


def test_output_without_the_done_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="RELAYPACS-WRK"):
        parse_output("Running 1s test @ http://127.0.0.1:1\nunable to connect\n")
