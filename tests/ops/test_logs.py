"""Logs: one JSON object per line with the request's id, exceptions without their message."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx

from relaypacs.telemetry import REQUEST_ID, JsonFormatter
from relaypacs.telemetry.logs import RequestIdFilter
from tests.gateway import run_gateway


def _logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"relaypacs.test.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class TestJsonFormatter:
    def test_a_line_carries_the_request_id_of_its_context(self) -> None:
        stream = io.StringIO()
        logger = _logger(stream)
        token = REQUEST_ID.set("abc123")
        try:
            logger.info("chunk %s stored", 3)
        finally:
            REQUEST_ID.reset(token)
        logger.info("outside")
        first, second = (json.loads(line) for line in stream.getvalue().splitlines())
        assert first["message"] == "chunk 3 stored"
        assert first["request_id"] == "abc123"
        assert first["level"] == "info"
        assert first["time"].endswith("+00:00")
        assert second["request_id"] == "-"

    def test_an_exception_is_its_type_and_frames_never_its_message(self) -> None:
        stream = io.StringIO()
        logger = _logger(stream)
        try:
            raise ValueError("DOE^JANE born 19230917")
        except ValueError:
            logger.exception("failed")
        line = json.loads(stream.getvalue())
        assert line["exception"] == "ValueError"
        assert any("test_logs.py" in frame for frame in line["frames"])
        assert "DOE" not in stream.getvalue()


class TestGatewayProcess:
    def test_json_lines_with_the_answered_request_id(self, tmp_path: Path) -> None:
        log = tmp_path / "gateway.log"
        with run_gateway(tmp_path / "data", {"RELAYPACS_LOG_FORMAT": "json"}, log_path=log) as base:
            answer = httpx.get(f"{base}/health/live", timeout=10)
            assert answer.status_code == 200
            request_id = answer.headers["x-request-id"]
        lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
        records = [json.loads(line) for line in lines]
        access = [r for r in records if r["logger"] == "relaypacs.access"]
        assert any(
            r["request_id"] == request_id and "GET /health/live" in r["message"] for r in access
        )
        # every log line of the server is JSON, uvicorn's too. (Not log lines: the banner of
        # `serve` and the first administrator's password, printed once on the console, indented.)
        other = [
            line
            for line in log.read_text().splitlines()
            if line.strip() and not line.startswith(("{", "relaypacs ", " "))
        ]
        assert other == [], other
