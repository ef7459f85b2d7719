"""The report lifecycle's use cases (only its opening so far: the rest is built by a later
issue)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.reports import repository


def open_report(session: AsyncSession, *, upload_id: uuid.UUID) -> None:
    """A delivered study awaits its report (status pending): written when the caller's
    transaction, the one that settles the delivery, commits."""
    repository.add_report(session, upload_id=upload_id)
