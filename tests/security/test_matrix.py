"""The generated security matrix, against a real gateway process: every endpoint of the app
(enumerated from its routes, not a hand list) x every role (and anonymous) x an own and a
foreign object. No cell may succeed without authorisation; refusals are 401 (no token), 403
(a role the policy does not list) or 404 (another user's object), and change nothing."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaypacs.auth.models import Role
from relaypacs.auth.policy import POLICY, Rule, app_policy
from relaypacs.config import Settings
from relaypacs.main import create_app
from tests.api.uploading import Study, batch_body, content_md5, make_study
from tests.security.live import PASSWORD, SECRET_KEY, LiveAccount, LiveGateway, live_gateway

ACCOUNTS = {
    "clin_a": "clinician",
    "clin_b": "clinician",  # owns the foreign objects
    "radio": "radiologist",
    "admin": "admin",
}
ACTORS = {"clinician": "clin_a", "radiologist": "radio", "admin": "admin", "anonymous": None}
FOREIGN_OWNER = "clin_b"
ID_PARAM = re.compile(r"\{(\w+_id)\}")


@dataclass(frozen=True)
class Cell:
    method: str
    path: str
    rule: Rule
    role: str
    kind: str  # own, foreign (an upload) or none (no object in the path)

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def authorised(self) -> bool:
        if self.rule.public:
            return True
        if self.role == "anonymous" or not self.rule.allows(Role(self.role)):
            return False
        # Another user's upload: administrators act on every upload (and may read it).
        return self.kind != "foreign" or self.role == "admin"

    def expected_refusal(self) -> int:
        if self.role == "anonymous":
            return 401
        assert self.rule.roles is not None
        return 404 if Role(self.role) in self.rule.roles else 403


def app_endpoints(tmp_path: Path) -> list[tuple[str, str, Rule]]:
    """The endpoints of the very app the server runs, from its routes."""
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET_KEY, api_docs=True))
    return [(e.method, e.path, POLICY[e.key]) for e in app_policy(app).endpoints]


def cells(endpoints: list[tuple[str, str, Rule]]) -> Iterator[Cell]:
    for method, path, rule in endpoints:
        params = ID_PARAM.findall(path)
        kinds = ["own", "foreign"] if "upload_id" in params else ["foreign"] if params else ["none"]
        for role in ACTORS:
            for kind in kinds:
                if kind == "own" and role in ("admin", "anonymous"):
                    continue  # administrators upload nothing; anonymous owns nothing
                yield Cell(method, path, rule, role, kind)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    root = tmp_path_factory.mktemp("matrix")
    # The matrix is about roles and objects. The second factor's policy (admins and
    # radiologists must enrol TOTP first) has its own tests in tests/auth; here it would make
    # every fresh login of those roles a TOTP login, one per 30-second step.
    # The API documentation on: every route there is, is in the matrix.
    env = {"RELAYPACS_TOTP_REQUIRED_ROLES": "[]", "RELAYPACS_API_DOCS": "true"}
    if request.param == "postgresql":
        env["RELAYPACS_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    with live_gateway(root / "data", root / "gateway.log", ACCOUNTS, env) as live:
        yield live


class Objects:
    """Fresh uploads for each cell, and who owns each upload the test created."""

    def __init__(self, client: httpx.Client, gateway: LiveGateway) -> None:
        self.client = client
        self.gateway = gateway
        self.owner_of: dict[str, str] = {}

    def upload(self, owner: str) -> tuple[str, Study]:
        study = make_study(1)
        response = self.client.post(
            "/api/v1/uploads",
            json=study.manifest(),
            headers=self.gateway.accounts[owner].headers,
        )
        assert response.status_code == 201, response.text
        upload_id: str = response.json()["id"]
        self.owner_of[upload_id] = owner
        return upload_id, study

    def state(self, upload_id: str) -> tuple[str, int]:
        owner = self.gateway.accounts[self.owner_of[upload_id]]
        body = self.client.get(f"/api/v1/uploads/{upload_id}", headers=owner.headers).json()
        return body["status"], body["received_bytes"]


def request_for(
    cell: Cell, upload_id: str | None, study: Study | None, accounts: dict[str, LiveAccount]
) -> dict[str, Any]:
    path = cell.path
    if upload_id is not None:
        path = path.replace("{upload_id}", upload_id)
    path = ID_PARAM.sub(lambda _m: str(uuid.uuid4()), path)  # objects that do not exist
    path = path.replace("{file_index}", "0").replace("{chunk_index}", "0")
    path = path.replace("{version}", "1")  # a report's signed version
    method = "GET" if cell.method == "MOUNT" else cell.method  # a mount's index
    request: dict[str, Any] = {"method": method, "url": path, "headers": {}}
    if cell.key == "POST /api/v1/auth/login":
        request["json"] = {"username": accounts["clin_a"].username, "password": PASSWORD}
    elif cell.key == "POST /api/v1/uploads":
        request["json"] = make_study(1).manifest()
    elif cell.path.endswith("/chunks:batch") and study is not None:
        request["content"] = batch_body([(0, 0, study.files[0])])
    elif "{chunk_index}" in cell.path and study is not None:
        request["content"] = study.files[0]
        request["headers"]["Content-MD5"] = content_md5(study.files[0])
    elif cell.method in ("POST", "PUT", "PATCH"):
        request["json"] = {}  # a shape the endpoint may refuse (422) only once authorised
    return request


def fresh_token(client: httpx.Client, account: LiveAccount) -> str:
    login = client.post(
        "/api/v1/auth/login", json={"username": account.username, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    token: str = login.json()["access_token"]
    return token


def test_no_cell_succeeds_without_authorisation(gateway: LiveGateway, tmp_path: Path) -> None:
    endpoints = app_endpoints(tmp_path)
    matrix = list(cells(endpoints))
    failures: list[str] = []
    refused = allowed = 0
    with httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        objects = Objects(client, gateway)
        for cell in matrix:
            actor = ACTORS[cell.role]
            upload_id = study = None
            if "{upload_id}" in cell.path:
                owner = actor if cell.kind == "own" else FOREIGN_OWNER
                assert owner is not None
                upload_id, study = objects.upload(owner)
            request = request_for(cell, upload_id, study, gateway.accounts)
            if actor is not None:
                # Session endpoints (logout, password...) may end the token they are called
                # with: they get a token of their own.
                account = gateway.accounts[actor]
                token = fresh_token(client, account) if "/auth/" in cell.path else account.token
                request["headers"]["Authorization"] = f"Bearer {token}"
            response = client.request(**request)
            status = response.status_code
            where = f"{cell.key} as {cell.role} on {cell.kind}: {status}"
            if cell.authorised():
                allowed += 1
                # The cell must really reach the endpoint, or the matrix proves nothing. (A
                # public endpoint may answer 401 itself, e.g. a login without a valid cookie.)
                refused_anyway = status == 403 or (status == 401 and not cell.rule.public)
                if refused_anyway or (cell.kind == "own" and status == 404) or status >= 500:
                    failures.append(f"{where} (authorised, refused) {response.text[:200]}")
            else:
                refused += 1
                if status != cell.expected_refusal():
                    failures.append(f"{where}, expected {cell.expected_refusal()}")
                if upload_id is not None and objects.state(upload_id) != ("pending", 0):
                    failures.append(f"{where}: the object changed")
            if response.is_success and actor is not None and cell.role != "admin":
                others = [u for u, o in objects.owner_of.items() if o != actor]
                leaked = [u for u in others if u in response.text]
                if leaked:
                    failures.append(f"{where}: shows another user's upload {leaked[0]}")
            headers = response.headers
            assert headers.get("cache-control") == "no-store", where
            assert headers.get("x-content-type-options") == "nosniff", where
            assert headers.get("x-frame-options") == "DENY", where
            assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), where
            assert "strict-transport-security" not in headers, where  # plain http
    endpoint_count = len(endpoints)
    print(
        f"\nsecurity matrix: {endpoint_count} endpoints x {len(ACTORS)} roles x own/foreign = "
        f"{len(matrix)} cells ({allowed} authorised, {refused} refused), "
        f"{len(failures)} failures"
    )
    assert endpoint_count == len(POLICY)
    assert not failures, "\n".join(failures)
