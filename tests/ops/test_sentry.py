"""Sentry: nothing sent without a DSN; with one, an unexpected error arrives at the DSN's
server with its release and route, and without the patient data, token or query string that
came with the request."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sentry_sdk

from relaypacs import __version__
from relaypacs.telemetry import scrub_event
from relaypacs.uploads import service as uploads_service
from tests.ops.conftest import account, client_of, ops_settings, started

PATIENT = "ZZPHITEST^QUINTILIA MARGARETHE"


class _Collector(BaseHTTPRequestHandler):
    received: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        encoding = self.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # type: ignore[import-not-found]

            body = brotli.decompress(body)
        type(self).received.append(body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def sentry_server() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://publickey@127.0.0.1:{server.server_address[1]}/42", received
    finally:
        server.shutdown()
        server.server_close()


def _events(received: list[bytes]) -> list[dict[str, object]]:
    events = []
    for envelope in received:
        for line in envelope.splitlines()[1:]:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and "exception" in item:
                events.append(item)
    return events


class TestSentry:
    async def test_nothing_is_sent_without_a_dsn(self, tmp_path: Path) -> None:
        async with started(ops_settings(tmp_path)):
            assert not sentry_sdk.get_client().is_active()

    async def test_an_unexpected_error_arrives_scrubbed(
        self,
        tmp_path: Path,
        sentry_server: tuple[str, list[bytes]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        dsn, received = sentry_server

        async def broken(*_args: object, **_kwargs: object) -> object:  # the injected fault
            raise RuntimeError(f"listing failed for {PATIENT}")

        settings = ops_settings(tmp_path, sentry_dsn=dsn, sentry_environment="test")
        async with started(settings) as app, client_of(app) as client:
            clinician = await account(app, client)
            monkeypatch.setattr(uploads_service, "list_uploads", broken)
            response = await client.get(
                f"/api/v1/uploads?patient={PATIENT}", headers=clinician.headers
            )
            assert response.status_code == 500
            assert PATIENT not in response.text
            sentry_sdk.flush(timeout=5)
        assert not sentry_sdk.get_client().is_active()  # closed with the app
        raw = b"".join(received)
        assert raw, "nothing reached the DSN's server"
        for secret in (PATIENT, "ZZPHITEST", clinician.token, "patient="):
            assert secret.encode() not in raw
        events = _events(received)
        assert len(events) == 1, raw[:3000]
        event = events[0]
        assert event["release"] == f"relaypacs@{__version__}"
        assert event["environment"] == "test"
        exception = event["exception"]
        assert isinstance(exception, dict)
        assert exception["values"][-1]["type"] == "RuntimeError"
        request = event.get("request")
        if isinstance(request, dict):
            assert "authorization" not in {k.lower() for k in request.get("headers", {})}
            assert "query_string" not in request


class TestScrubEvent:
    def test_removes_bodies_queries_headers_messages_and_locals(self) -> None:
        event = {
            "request": {
                "url": f"http://gw/api/v1/uploads?name={PATIENT}",
                "query_string": f"name={PATIENT}",
                "data": {"patient_name": PATIENT},
                "cookies": {"refresh": "secret"},
                "headers": {"Authorization": "Bearer tok", "User-Agent": "ua"},
            },
            "exception": {
                "values": [
                    {
                        "type": "ValueError",
                        "value": PATIENT,
                        "stacktrace": {"frames": [{"vars": {"name": PATIENT}, "lineno": 3}]},
                    }
                ]
            },
            "user": {"username": "dr"},
            "breadcrumbs": {"values": [{"category": "httplib", "data": {"url": PATIENT}}]},
        }
        scrubbed = scrub_event(event)
        text = json.dumps(scrubbed)
        assert PATIENT not in text
        assert "tok" not in text
        assert "secret" not in text
        assert scrubbed["request"]["headers"] == {"User-Agent": "ua"}
        assert scrubbed["exception"]["values"][0]["type"] == "ValueError"
        assert scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]["lineno"] == 3
