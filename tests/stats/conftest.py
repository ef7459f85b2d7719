"""The statistics tests: the in-process app of tests/api, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.api.conftest import app, client, clinician, make_account

__all__ = ["app", "client", "clinician", "make_account"]
