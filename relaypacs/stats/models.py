"""The statistics' table: one row per past day (UTC), its figures as computed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Date
from sqlalchemy.orm import Mapped, mapped_column

from relaypacs.db import Base, UTCDateTime, utcnow


class DailyStat(Base):
    __tablename__ = "daily_stat"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    # schemas.DayFigures as JSON (counts, codes and target names: no patient data).
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
