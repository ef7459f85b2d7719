"""A signed-in uploader is about to send a study: the DICOM validation worker starts at the
login, while the client reads and hashes the files, not on the study's first file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from relaypacs.auth.models import Role
from relaypacs.dicom import DicomValidator
from relaypacs.main import create_app
from relaypacs.state import app_state
from tests.auth.conftest import identity_settings, login, make_user


@pytest.fixture
async def sqlite_app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = identity_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", totp_required_roles=[]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.mark.parametrize(
    ("role", "warmed"),
    [(Role.CLINICIAN, True), (Role.RADIOLOGIST, True), (Role.ADMIN, False)],
)
async def test_an_uploader_login_starts_the_validation_worker(
    sqlite_app: FastAPI, role: Role, warmed: bool
) -> None:
    validator: DicomValidator = app_state(sqlite_app).validator
    assert validator.worker_count == 0
    person = await make_user(sqlite_app, role)
    transport = httpx.ASGITransport(app=sqlite_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await login(client, person)).status_code == 200
    if warmed:
        assert validator._warming is not None
        await asyncio.wait_for(validator._warming, 30)
        assert validator.worker_count == 1
    else:
        assert validator._warming is None
        assert validator.worker_count == 0
