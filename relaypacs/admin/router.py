"""Administration of forwarding: uploads that failed or are stuck, retry and cancel."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import func, or_, select

from relaypacs.admin import service
from relaypacs.audit.service import record_for_request
from relaypacs.auth.dependencies import AdminUser
from relaypacs.db import utcnow
from relaypacs.forwarding import service as forwarding
from relaypacs.state import ReadSessionDep, get_app_state
from relaypacs.uploads.models import Upload, UploadStatus
from relaypacs.uploads.schemas import UploadList, UploadRead
from relaypacs.uploads.service import read_upload, summary_of

router = APIRouter(prefix="/admin", tags=["admin"])

Problem = Literal["failed", "stuck", "queued", "forwarding"]


@router.get("/uploads", response_model=UploadList)
async def list_problem_uploads(
    request: Request,
    _admin: AdminUser,
    session: ReadSessionDep,
    problem: Annotated[Problem, Query(alias="status")] = "failed",
    stuck_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 15,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> UploadList:
    """`failed`: the PACS refused instances; `stuck`: queued or forwarding and retrying, or
    not moved for `stuck_minutes`; `queued`, `forwarding`: as they say."""
    query = select(Upload)
    if problem == "failed":
        query = query.where(Upload.status == UploadStatus.FAILED)
    elif problem in ("queued", "forwarding"):
        query = query.where(Upload.status == UploadStatus(problem))
    else:
        since = utcnow() - dt.timedelta(minutes=stuck_minutes)
        retrying = forwarding.retrying_uploads()
        query = query.where(
            Upload.status.in_(
                [UploadStatus.QUEUED, UploadStatus.FORWARDING, UploadStatus.RECEIVED]
            ),
            or_(Upload.id.in_(retrying), Upload.updated_at < since),
        )
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    uploads = (
        await session.scalars(query.order_by(Upload.updated_at.desc()).limit(limit).offset(offset))
    ).all()
    if uploads:  # other users' study details are shown
        await record_for_request(
            request,
            action="admin.upload_list",
            object_type="upload",
            details={"status": problem, "upload_ids": [str(u.id) for u in uploads]},
        )
    return UploadList(items=[summary_of(u, u.total_bytes) for u in uploads], total=total or 0)


@router.post("/uploads/{upload_id}/retry", response_model=UploadRead)
async def retry_upload(upload_id: uuid.UUID, request: Request, admin: AdminUser) -> UploadRead:
    """Send again what failed (and anything pending) now, resetting the retry schedule."""
    state = get_app_state(request)
    async with state.db.sessionmaker() as session, session.begin():
        upload = await service.retry_forwarding(
            session, upload_id=upload_id, admin=admin, client_ip=_ip(request)
        )
        view = await read_upload(session, upload)
    if state.forwarder is not None:
        state.forwarder.wake()
    return view


@router.post("/uploads/{upload_id}/cancel", response_model=UploadRead)
async def cancel_upload(upload_id: uuid.UUID, request: Request, admin: AdminUser) -> UploadRead:
    """Stop forwarding this upload for good and delete its stored files."""
    state = get_app_state(request)
    async with state.db.sessionmaker() as session, session.begin():
        upload = await service.cancel_forwarding(
            session, upload_id=upload_id, admin=admin, client_ip=_ip(request)
        )
        view = await read_upload(session, upload)
    await state.storage.delete_prefix(f"uploads/{upload_id}/")
    return view


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None
