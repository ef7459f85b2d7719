"""Liveness, readiness and metrics: at the root (not under /api/v1), where probes and
Prometheus look for them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from relaypacs import __version__
from relaypacs.ops import service
from relaypacs.ops.schemas import Liveness, Readiness
from relaypacs.state import AppStateDep

router = APIRouter(tags=["operations"])


@router.get("/health/live")
async def live() -> Liveness:
    """The process answers (no dependency is asked: a database outage must not restart it)."""
    return Liveness(version=__version__)


@router.get("/health/ready", responses={503: {"model": Readiness}})
async def ready(state: AppStateDep) -> JSONResponse:
    """Whether this replica should get traffic: 200 ready or degraded, 503 unready."""
    readiness = await service.check_readiness(
        db=state.db, storage=state.storage, checks=state.health
    )
    return JSONResponse(
        readiness.model_dump(mode="json"),
        status_code=503 if readiness.status == "unready" else 200,
    )


@router.get("/metrics", response_class=Response)
async def metrics(
    request: Request,
    state: AppStateDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Prometheus's text exposition (bearer token, or loopback only without one)."""
    service.check_metrics_access(
        state.settings,
        client_host=request.client.host if request.client else None,
        authorization=authorization,
    )
    body, content_type = await service.scrape_metrics(
        db=state.db,
        within=state.settings.health_timeout_seconds,
        breakers=state.forwarder.breaker_states() if state.forwarder else {},
        sse_streams=state.notice_hub.open_streams,
    )
    return Response(body, media_type=content_type)
