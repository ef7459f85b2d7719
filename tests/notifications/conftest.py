"""The notification tests: the in-process gateway of the report tests (notifications come from
reports), and real gateway processes for the event stream."""

from __future__ import annotations

from tests.reports.conftest import app, client, clinician, make_account, smtp

__all__ = ["app", "client", "clinician", "make_account", "smtp"]
