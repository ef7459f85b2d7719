"""Hostile values in every parameter of every endpoint, against a real gateway process: NUL
bytes, integers past 64 bits, lone surrogates, invalid UTF-8, right-to-left marks, very long
strings. The endpoints and their parameters come from the app's own OpenAPI document (not a
hand list), so a new endpoint is covered the day it is added. No answer may be a 5xx, and the
server must keep answering.

Each value is sent alone, the rest of the request plausible (built from the schema), as the
role the policy allows, so that it reaches the endpoint's own validation and code."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaypacs.auth.models import Role
from relaypacs.auth.policy import POLICY, Rule
from relaypacs.config import Settings
from relaypacs.main import create_app
from tests.api.uploading import make_study
from tests.security.live import PASSWORD, SECRET_KEY, LiveGateway, live_gateway

ACCOUNTS = {"clin": "clinician", "radio": "radiologist", "admin": "admin"}
ROLE_ACCOUNT = {Role.CLINICIAN: "clin", Role.ADMIN: "admin", Role.RADIOLOGIST: "radio"}
# Endpoints that end the session they are called with get a fresh one each time.
SESSION_ENDING = re.compile(r"/auth/(logout|password|sessions|totp)")

# As sent on the wire: a JSON text (ensure_ascii, so lone surrogates travel as \ud800 escapes)
# and a percent-encoded query or path segment (raw bytes: invalid UTF-8 included).
HOSTILE_STRINGS: list[str] = [
    "\x00",
    "a\x00b",
    "\ud800",  # a lone surrogate: valid JSON, not encodable as UTF-8
    "\udfff\ud800",
    "\u202eevil",  # right-to-left override
    "ADMIN",
    "İ",  # a dotted capital I: case folding grows it
    "ﬃ",  # a ligature NFKC expands
    "\x1b[31m",
    "%00",
    "' OR 1=1 --",
    "*",
    "../../etc/passwd",
    "x" * 300,
    "x" * 100_000,
    "",
]
HOSTILE_INTS: list[int] = [
    99999999999999999999,
    9223372036854775808,
    -9223372036854775809,
    2**63 - 1,
    -1,
    0,
]
# Percent-encoded bytes that are not UTF-8 at all (query strings and paths only).
HOSTILE_RAW = ["%ED%A0%80", "%FF%FE", "%C0%80", "%00"]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    rule: Rule
    operation: dict[str, Any]


def openapi(tmp_path: Path) -> dict[str, Any]:
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET_KEY))
    return app.openapi()


def operations(document: dict[str, Any]) -> Iterator[Operation]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield Operation(method.upper(), path, POLICY[f"{method.upper()} {path}"], operation)


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = document["components"]["schemas"][name]
    if "anyOf" in schema:  # Optional[X]: the first non-null choice
        choices = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return resolve(document, choices[0]) if choices else {"type": "null"}
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return resolve(document, schema["allOf"][0])
    return schema


def plausible(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A value of the schema's shape (not necessarily accepted: the point is to get past
    parsing to the field under test)."""
    schema = resolve(document, schema)
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object":
        return {
            name: plausible(document, sub)
            for name, sub in schema.get("properties", {}).items()
            if name in schema.get("required", [])
        }
    if kind == "array":
        return []
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return False
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    return "x" * max(1, int(schema.get("minLength", 1)))


def fields(
    document: dict[str, Any], schema: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path, type) of every string and integer field of a JSON body, nested objects too."""
    schema = resolve(document, schema)
    for name, sub in schema.get("properties", {}).items():
        resolved = resolve(document, sub)
        kind = resolved.get("type")
        if kind in ("string", "integer"):
            yield (*prefix, name), kind
        elif kind == "object":
            yield from fields(document, resolved, (*prefix, name))


def with_value(body: Any, path: tuple[str, ...], value: Any) -> Any:
    body = dict(body) if isinstance(body, dict) else {}
    if len(path) == 1:
        body[path[0]] = value
    else:
        body[path[0]] = with_value(body.get(path[0], {}), path[1:], value)
    return body


def hostile(kind: str) -> list[Any]:
    return [*list(HOSTILE_INTS), "1" * 40] if kind == "integer" else list(HOSTILE_STRINGS)


def wire(value: Any) -> str:
    """A query or path value, percent-encoded as a client would (surrogates as their raw
    UTF-8-like bytes: no valid encoding exists)."""
    return quote(str(value).encode("utf-8", "surrogatepass"), safe="")


@dataclass
class Target:
    client: httpx.Client
    gateway: LiveGateway
    upload_id: str

    def token(self, op: Operation) -> str | None:
        if op.rule.public:
            return None
        roles = op.rule.roles or frozenset()
        role = next(r for r in (Role.CLINICIAN, Role.ADMIN, Role.RADIOLOGIST) if r in roles)
        account = self.gateway.accounts[ROLE_ACCOUNT[role]]
        if SESSION_ENDING.search(op.path):
            login = self.client.post(
                "/api/v1/auth/login", json={"username": account.username, "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            fresh: str = login.json()["access_token"]
            return fresh
        return account.token

    def send(self, op: Operation, path: str, query: str, body: Any) -> httpx.Response:
        token = self.token(op)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        content: bytes | None = None
        if body is not None:
            content = json.dumps(body).encode()  # ensure_ascii: surrogates as escapes
            headers["Content-Type"] = "application/json"
        url = path + (f"?{query}" if query else "")
        return self.client.request(op.method, url, content=content, headers=headers)


def path_with(op: Operation, upload_id: str, override: tuple[str, str] | None = None) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if override is not None and name == override[0]:
            return override[1]
        if name == "upload_id":
            return upload_id
        if name.endswith("_id"):
            return str(uuid.uuid4())
        return "0"

    return re.sub(r"\{(\w+)\}", fill, op.path)


def cases(
    document: dict[str, Any], op: Operation, upload_id: str
) -> Iterator[tuple[str, str, str, Any]]:
    """(what, path, query, body) for every hostile value in every parameter of `op`."""
    body_schema = (
        op.operation.get("requestBody", {})
        .get("content", {})
        .get("application/json", {})
        .get("schema")
    )
    body = plausible(document, body_schema) if body_schema else None
    plain_path = path_with(op, upload_id)
    for parameter in op.operation.get("parameters", []):
        name, where = parameter["name"], parameter["in"]
        kind = resolve(document, parameter.get("schema", {})).get("type", "string")
        # A URL holds at most 64 KiB (httpx): the longest string goes in bodies only.
        values = [wire(v) for v in hostile(kind) if len(str(v)) < 10_000] + HOSTILE_RAW
        for value in values:
            if where == "query":
                yield f"{name}={value[:20]}", plain_path, f"{name}={value}", body
            elif where == "path":
                yield f"{{{name}}}={value[:20]}", path_with(op, upload_id, (name, value)), "", body
    if body_schema:
        for field_path, kind in fields(document, body_schema):
            for value in hostile(kind):
                yield (
                    f"body.{'.'.join(field_path)}={str(value)[:20]!r}",
                    plain_path,
                    "",
                    with_value(body, field_path, value),
                )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    root = tmp_path_factory.mktemp("hostile")
    env = {
        "RELAYPACS_TOTP_REQUIRED_ROLES": "[]",
        # Thousands of requests from one address and account: the limits have their own tests.
        **{
            f"RELAYPACS_RATE_LIMIT_{name}": "100000/minute"
            for name in ("LOGIN_IP", "LOGIN_ACCOUNT_IP", "LOGIN_ACCOUNT", "TOTP_IP", "TOTP_ACCOUNT")
        },
        "RELAYPACS_RATE_LIMIT_UPLOAD_INIT": "100000/minute",
    }
    if request.param == "postgresql":
        env["RELAYPACS_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    with live_gateway(root / "data", root / "gateway.log", ACCOUNTS, env) as live:
        yield live


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return openapi(tmp_path_factory.mktemp("openapi"))


@pytest.fixture(scope="module")
def target(gateway: LiveGateway) -> Iterator[Target]:
    with httpx.Client(base_url=gateway.base_url, timeout=60) as client:
        upload = client.post(
            "/api/v1/uploads",
            json=make_study(1).manifest(),
            headers=gateway.accounts["clin"].headers,
        )
        assert upload.status_code == 201, upload.text
        yield Target(client, gateway, upload.json()["id"])


def test_no_hostile_value_in_any_parameter_gets_a_5xx(
    target: Target, document: dict[str, Any]
) -> None:
    failures: list[str] = []
    sent = 0
    for op in operations(document):
        for what, path, query, body in cases(document, op, target.upload_id):
            sent += 1
            try:
                response = target.send(op, path, query, body)
            except httpx.TransportError as error:  # e.g. a stream cut after its 200
                failures.append(f"{op.method} {op.path} {what}: {type(error).__name__}")
                continue
            if response.status_code >= 500:
                failures.append(f"{op.method} {op.path} {what}: {response.status_code}")
            elif response.status_code >= 400:
                problem = response.json().get("error", {})
                if not problem.get("code") or not problem.get("message"):
                    failures.append(f"{op.method} {op.path} {what}: no code and message")
    assert target.client.get("/api/v1/health").status_code == 200
    assert sent > 500, sent  # the document really listed the endpoints and their parameters
    assert not failures, "\n".join(failures[:50])


# The same property with random text and integers, on the filters and free-text fields most
# exposed to clients: every string query parameter of every GET, and the login body.
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=80), number=st.integers())
def test_random_text_and_integers_get_no_5xx(
    target: Target, document: dict[str, Any], text: str, number: int
) -> None:
    for op in operations(document):
        for parameter in op.operation.get("parameters", []):
            if parameter["in"] != "query":
                continue
            kind = resolve(document, parameter.get("schema", {})).get("type", "string")
            value = wire(number if kind == "integer" else text)
            response = target.send(
                op, path_with(op, target.upload_id), f"{parameter['name']}={value}", None
            )
            assert response.status_code < 500, (op.path, parameter["name"], response.status_code)
    login = target.client.post(
        "/api/v1/auth/login",
        content=json.dumps({"username": text, "password": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert login.status_code < 500, login.status_code
