"""The shapes of the health answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"
    version: str


class CheckResult(BaseModel):
    ok: bool
    # A required dependency down makes the gateway unready (503); an optional one (Redis, the
    # PACS) only degraded: the gateway still does its work without it.
    required: bool
    seconds: float
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unready"]
    version: str
    checks: dict[str, CheckResult]
