"""The web app has a readable sentence for every error code the API returns
(web/src/lib/api/errors.ts): each domain error's code, and those the app's own handlers and the
HTTP surface write."""

from __future__ import annotations

import re
from pathlib import Path

import relaypacs.main  # noqa: F401  (imports every domain, so every error class exists)
from relaypacs.errors import GatewayError

ERRORS_TS = Path(__file__).resolve().parents[2] / "web" / "src" / "lib" / "api" / "errors.ts"
# Written by relaypacs/main.py's handlers and relaypacs/middleware.py, not by an error class.
HANDLER_CODES = {
    "invalid_request",
    "internal_error",
    "storage_unavailable",
    "database_busy",
    "database_unavailable",
    "storage_full",
    "storage_missing",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "request_too_large",
    "request_header_fields_too_large",
    "cors_origin_not_allowed",
}


def error_codes() -> set[str]:
    codes: set[str] = set()
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return codes | HANDLER_CODES


class TestErrorMessages:
    def test_every_code_has_its_sentence_in_the_app(self) -> None:
        source = ERRORS_TS.read_text(encoding="utf-8")
        table = source[
            source.index("const MESSAGES") : source.index("};", source.index("const MESSAGES"))
        ]
        listed = set(re.findall(r"^\s+([a-z0-9_]+): ", table, re.MULTILINE))
        missing = sorted(error_codes() - listed)
        assert missing == [], f"add a message to web/src/lib/api/errors.ts for: {missing}"

    def test_the_walk_finds_the_domains_errors(self) -> None:
        codes = error_codes()
        assert {"upload_not_found", "chunk_conflict", "invalid_totp_code", "rate_limited"} <= codes
