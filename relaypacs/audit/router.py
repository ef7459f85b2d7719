"""The audit log for administrators: query it page by page, or export it as CSV or JSON lines.
Each query and export is itself recorded."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from relaypacs.audit.repository import AuditFilter, query_events, stream_events
from relaypacs.audit.schemas import AuditEventList, AuditEventRead, AuditExport, AuditPage
from relaypacs.audit.service import record_for_request
from relaypacs.auth.dependencies import AdminUser
from relaypacs.db import utcnow
from relaypacs.state import ReadSessionDep, get_app_state

router = APIRouter(prefix="/admin/audit", tags=["admin"])

COLUMNS = [
    "id",
    "at",
    "actor_id",
    "actor_role",
    "action",
    "outcome",
    "object_type",
    "object_id",
    "study_instance_uid",
    "client_ip",
    "details",
]


def _filter(query: AuditPage | AuditExport) -> AuditFilter:
    return AuditFilter(
        actor_id=query.actor_id,
        action=query.action,
        outcome=query.outcome,
        object_type=query.object_type,
        object_id=query.object_id,
        study_instance_uid=query.study_instance_uid,
        since=query.since,
        until=query.until,
    )


@router.get("", response_model=AuditEventList)
async def query_audit(
    query: Annotated[AuditPage, Query()],
    request: Request,
    _admin: AdminUser,
    session: ReadSessionDep,
) -> AuditEventList:
    """Newest first; `limit` at most 500; page with `before`."""
    where = _filter(query)
    await record_for_request(
        request,
        action="audit.query",
        details={**where.as_details(), "limit": query.limit, "before": query.before},
    )
    rows = await query_events(session, where, limit=query.limit, before=query.before)
    return AuditEventList(
        items=[AuditEventRead.model_validate(r) for r in rows],
        next_before=rows[-1].id if len(rows) == query.limit else None,
    )


def _safe_cell(value: str) -> str:
    # A spreadsheet would run a cell starting like a formula (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_safe_cell(v) for v in values])
    return buffer.getvalue()


@router.get("/export")
async def export_audit(
    query: Annotated[AuditExport, Query()], request: Request, _admin: AdminUser
) -> StreamingResponse:
    """Every matching record, oldest first, streamed (nothing is built in memory)."""
    where = _filter(query)
    await record_for_request(
        request, action="audit.export", details={**where.as_details(), "format": query.format}
    )
    records = stream_events(get_app_state(request).db.read_sessionmaker, where)

    async def lines() -> AsyncIterator[str]:
        if query.format == "csv":
            yield _csv_line(COLUMNS)
        async for event in records:
            row = AuditEventRead.model_validate(event).model_dump(mode="json")
            if query.format == "csv":
                yield _csv_line(
                    [
                        json.dumps(row[c], sort_keys=True)
                        if c == "details"
                        else ("" if row[c] is None else str(row[c]))
                        for c in COLUMNS
                    ]
                )
            else:
                yield json.dumps(row, sort_keys=True) + "\n"

    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv; charset=utf-8" if query.format == "csv" else "application/x-ndjson"
    return StreamingResponse(
        lines(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{query.format}"'},
    )
