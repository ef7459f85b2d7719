"""HTTP endpoints of the administration console: uploads that failed or are stuck (retry and
cancel their forwarding), and the audit log (query it page by page, or export it as CSV or
JSON lines; each query and export is itself recorded). User administration is
relaypacs/users/router.py."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from relaypacs.admin import service
from relaypacs.admin.schemas import TargetHealthList
from relaypacs.audit import service as audit
from relaypacs.audit.schemas import AuditEventList, AuditExport, AuditPage
from relaypacs.auth.dependencies import ActorDep, AdminUser
from relaypacs.db import utcnow
from relaypacs.fields import Offset
from relaypacs.state import AppStateDep
from relaypacs.uploads.schemas import UploadList, UploadRead
from relaypacs.uploads.service import ProblemKind

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/uploads", response_model=UploadList)
async def list_problem_uploads(
    _admin: AdminUser,
    actor: ActorDep,
    state: AppStateDep,
    problem: Annotated[ProblemKind, Query(alias="status")] = "failed",
    stuck_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 15,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[Offset, Query()] = 0,
) -> UploadList:
    items, total = await service.list_problem_uploads(
        state.db.read_sessionmaker,
        state.db.sessionmaker,
        actor=actor,
        problem=problem,
        stuck_minutes=stuck_minutes,
        limit=limit,
        offset=offset,
    )
    return UploadList(items=items, total=total)


@router.post("/uploads/{upload_id}/retry", response_model=UploadRead)
async def retry_upload(
    upload_id: uuid.UUID, _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> UploadRead:
    """Send again what failed (and anything pending) now, resetting the retry schedule."""
    return await service.retry_forwarding(
        state.db.sessionmaker,
        state.forwarder,
        actor=actor,
        upload_id=upload_id,
        settings=state.settings,
    )


@router.post("/uploads/{upload_id}/cancel", response_model=UploadRead)
async def cancel_upload(
    upload_id: uuid.UUID, _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> UploadRead:
    """Stop forwarding this upload for good and delete its stored files."""
    return await service.cancel_forwarding(
        state.db.sessionmaker, state.storage, actor=actor, upload_id=upload_id
    )


@router.get("/targets", response_model=TargetHealthList)
async def list_targets(_admin: AdminUser, state: AppStateDep) -> TargetHealthList:
    """Every configured PACS target: probed now (reachable, or why not), this replica's
    circuit breaker, its queue (how many studies wait, the oldest's age) and its last
    outcomes. No study or patient data."""
    return await service.target_health(
        state.db.read_sessionmaker,
        settings=state.settings,
        clients=state.health.pacs,
        forwarder=state.forwarder,
    )


@router.get("/audit", response_model=AuditEventList)
async def query_audit(
    query: Annotated[AuditPage, Query()],
    _admin: AdminUser,
    actor: ActorDep,
    state: AppStateDep,
) -> AuditEventList:
    """Newest first; `limit` at most 500; page with `before`."""
    return await audit.query_log(
        state.db.read_sessionmaker, state.db.sessionmaker, actor=actor, query=query
    )


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The records, one per line (JSON Lines) or CSV with a header row.",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
async def export_audit(
    query: Annotated[AuditExport, Query()], _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> StreamingResponse:
    """Every matching record, oldest first, streamed (nothing is built in memory)."""
    lines = await audit.export_log(
        state.db.read_sessionmaker, state.db.sessionmaker, actor=actor, query=query
    )
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv; charset=utf-8" if query.format == "csv" else "application/x-ndjson"
    return StreamingResponse(
        lines,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{query.format}"'},
    )
