"""The scheduler's one table: a row per job, its lease and its last run."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from relaypacs.db import Base, UTCDateTime


class ScheduledJob(Base):
    """A job's lease: whoever moves `lease_until` from the past into the future runs the job.
    While it runs the lease is renewed; when it ends, `lease_until` becomes the start of the
    next period, so that no replica runs it again before then."""

    __tablename__ = "scheduled_job"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_started: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_finished: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_outcome: Mapped[str | None] = mapped_column(String(16))  # ok, failed
