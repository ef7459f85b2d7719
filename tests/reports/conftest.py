"""The report tests: the in-process gateway of tests/api, with the report settings on (a PACS
viewer URL template), on each database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from relaypacs.config import Settings
from relaypacs.main import create_app
from tests.api.conftest import CHUNK_SIZE, client, clinician, make_account

__all__ = ["app", "client", "clinician", "make_account"]

VIEWER = "http://pacs.example/viewer?study={study_instance_uid}"


@pytest.fixture(scope="session")
async def app(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("reports"),
        database_url=database_url,
        chunk_size=CHUNK_SIZE,
        dicom_workers=2,
        secret_key="test-signing-key-" + "x" * 32,
        totp_required_roles=[],
        rate_limit_login_ip="100000/minute",
        pacs_viewer_url=VIEWER,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application
