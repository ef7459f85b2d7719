"""Administration of forwarding: uploads that failed or are stuck, retry and cancel."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from relaypacs.admin import service
from relaypacs.audit.service import record_for_request
from relaypacs.auth.dependencies import AdminUser
from relaypacs.state import ReadSessionDep, get_app_state
from relaypacs.uploads import service as uploads_service
from relaypacs.uploads.schemas import UploadList, UploadRead
from relaypacs.uploads.service import ProblemKind, read_upload

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/uploads", response_model=UploadList)
async def list_problem_uploads(
    request: Request,
    _admin: AdminUser,
    session: ReadSessionDep,
    problem: Annotated[ProblemKind, Query(alias="status")] = "failed",
    stuck_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 15,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> UploadList:
    items, total = await uploads_service.list_problem_uploads(
        session, problem=problem, stuck_minutes=stuck_minutes, limit=limit, offset=offset
    )
    if items:  # other users' study details are shown
        await record_for_request(
            request,
            action="admin.upload_list",
            object_type="upload",
            details={"status": problem, "upload_ids": [str(u.id) for u in items]},
        )
    return UploadList(items=items, total=total)


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
