"""The gateway app on each database, driven in-process through httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.auth.service import create_user
from relaypacs.config import Settings
from relaypacs.main import create_app
from relaypacs.state import app_state
from tests.conftest import unique_name

CHUNK_SIZE = 256 * 1024
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
async def app(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    data_dir = tmp_path_factory.mktemp("gateway")
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        chunk_size=CHUNK_SIZE,
        dicom_workers=2,
        secret_key="test-signing-key-" + "x" * 32,
        # These tests are about uploads and roles: TOTP has its own tests (tests/auth/).
        totp_required_roles=[],
        # Every test logs in new accounts from the same in-process address.
        rate_limit_login_ip="100000/minute",
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


@dataclass(frozen=True)
class Account:
    username: str
    role: Role
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


MakeAccount = Callable[..., Awaitable[Account]]


@pytest.fixture
def make_account(app: FastAPI, client: httpx.AsyncClient) -> MakeAccount:
    async def _make(role: Role = Role.CLINICIAN) -> Account:
        username = unique_name(role.value)
        async with app_state(app).db.sessionmaker() as session, session.begin():
            await create_user(session, username=username, password=PASSWORD, role=role)
        response = await client.post(
            "/api/v1/auth/login", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return Account(username, role, response.json()["access_token"])

    return _make


@pytest.fixture
async def clinician(make_account: MakeAccount) -> Account:
    return await make_account(Role.CLINICIAN)
