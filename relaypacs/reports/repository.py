"""Every query of the report table."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.reports.models import Report


def add_report(session: AsyncSession, *, upload_id: uuid.UUID) -> None:
    session.add(Report(upload_id=upload_id))
