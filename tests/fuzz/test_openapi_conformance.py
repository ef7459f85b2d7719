"""Schemathesis against a real gateway process: every operation of the app's own OpenAPI
document (a new endpoint is covered the day it is added), with requests generated from its
schema, valid and invalid, sent as the role the policy allows. Each answer must pass
schemathesis's checks: no 5xx; a status the document lists (every error is the `Error` shape,
`default`); the content type and the body the document promises; an invalid request refused
with a 4xx; a valid one accepted, except where a rule no schema can state decides (below).

A short run here (RELAYPACS_TEST_FUZZ_EXAMPLES per operation and mode, 6 by default); a long
one by `RELAYPACS_TEST_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/fuzz`."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import positive_data_acceptance

from relaypacs.auth.models import Role
from relaypacs.auth.policy import POLICY
from relaypacs.config import Settings
from relaypacs.main import create_app
from tests.security.live import SECRET_KEY, LiveGateway, live_gateway

EXAMPLES = int(os.environ.get("RELAYPACS_TEST_FUZZ_EXAMPLES", "6"))
ROLE_ACCOUNT = {Role.CLINICIAN: "clin", Role.RADIOLOGIST: "radio", Role.ADMIN: "admin"}
# Ending the caller's own session (or second factor) would end the run's: not fuzzed here
# (tests/auth covers them, tests/security/test_hostile_params.py sends them hostile values).
SESSION_ENDING = re.compile(r"/auth/(logout|password|sessions|totp)")
# The live stream of notices answers for minutes (Server-Sent Events): tests/notifications.
NOT_FUZZED = re.compile(rf"{SESSION_ENDING.pattern}|/notifications/stream$")
# A valid request by the schema that the gateway may still refuse, for a rule the document
# cannot state: a chunk's checksum must match its body (a chunk batch's body: its framing and
# its parts' digests); an upload's sizes are checked against
# the gateway's settings; a password must be strong; the statistics' range of days (`from` not
# after `to`, at most 366 days) spans two parameters.
SEMANTIC_RULES = {
    ("PUT", "/api/v1/uploads/{upload_id}/files/{file_index}/chunks/{chunk_index}"),
    ("POST", "/api/v1/uploads/{upload_id}/chunks:batch"),
    ("POST", "/api/v1/uploads"),
    ("POST", "/api/v1/admin/users/{user_id}/password"),
    ("POST", "/api/v1/admin/users"),
    ("GET", "/api/v1/admin/stats"),
}


@schemathesis.serializer("application/vnd.relaypacs.chunk-batch")
def _chunk_batch(ctx: Any, value: Any) -> bytes:
    """A chunk batch's body (docs/api.md) as generated: any bytes (the document says binary)."""
    if isinstance(value, bytes):
        return value
    data = getattr(value, "data", value)  # schemathesis's Binary
    return data if isinstance(data, bytes) else str(data).encode()


def _document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(data_dir=Path(tmp), secret_key=SECRET_KEY)).openapi()


# The run signs every request itself, as the role the policy allows (no generated credentials);
# parameters the document does not name are ignored by design (as most HTTP APIs do), so no
# extra ones are generated to be refused.
CONFIG = SchemathesisConfig.from_dict(
    {"generation": {"allow-extra-parameters": False, "with-security-parameters": False}}
)
SCHEMA = schemathesis.openapi.from_dict(_document(), config=CONFIG)


def _operations() -> list[Any]:
    operations = []
    for result in SCHEMA.get_all_operations():
        if isinstance(result, Err):  # the document itself is wrong: no run at all
            raise result.err()
        if not NOT_FUZZED.search(result.ok().path):
            operations.append(result.ok())
    return operations


OPERATIONS = _operations()


def _account(method: str, path: str) -> str | None:
    """The account of the least privileged role the policy lets call it (None: public)."""
    rule = POLICY[f"{method} {path}"]
    if rule.roles is None:
        return None
    role = next(r for r in (Role.CLINICIAN, Role.RADIOLOGIST, Role.ADMIN) if r in rule.roles)
    return ROLE_ACCOUNT[role]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    tmp = tmp_path_factory.mktemp("fuzz")
    accounts = {"clin": "clinician", "radio": "radiologist", "admin": "admin"}
    with live_gateway(tmp / "data", tmp / "gateway.log", accounts, {}) as live:
        yield live


def test_every_operation_is_fuzzed() -> None:
    """Every route of the policy table is in the run, but the session-ending ones, the stream
    and the API's own documentation."""
    fuzzed = {f"{op.method.upper()} {op.path}" for op in OPERATIONS}
    undocumented = re.compile(r"^(MOUNT |GET /api/v1/(docs|openapi\.json)$)")
    expected = {
        key for key in POLICY if not undocumented.search(key) and not NOT_FUZZED.search(key)
    }
    assert fuzzed == expected
    assert {f"{m} {p}" for m, p in SEMANTIC_RULES} <= fuzzed  # no exemption for a gone route


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method.upper()} {op.path}")
def test_answers_conform_to_the_document(gateway: LiveGateway, operation: Any) -> None:
    method, path = operation.method.upper(), operation.path
    account = _account(method, path)
    headers = gateway.accounts[account].headers if account else {}
    excluded = [positive_data_acceptance] if (method, path) in SEMANTIC_RULES else []
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES * 2,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(cases)
    def run(case: Any) -> None:
        case.call_and_validate(
            base_url=gateway.base_url, headers=dict(headers), excluded_checks=excluded
        )

    run()
