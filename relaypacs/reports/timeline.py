"""An upload's timeline: every step of the study's journey with its time, from "started" to
"report ready" (and its write-back to the PACS), from the audit log, the upload and its
report. Served by the report domain because the journey ends in the report."""

from __future__ import annotations

import uuid
from typing import Any

from relaypacs.audit import service as audit
from relaypacs.audit.models import Actor, AuditEvent
from relaypacs.audit.service import record_alone
from relaypacs.auth.models import User
from relaypacs.db import Database
from relaypacs.reports import repository
from relaypacs.reports.schemas import Timeline, TimelineStep
from relaypacs.uploads import service as uploads

# --- the study's timeline --------------------------------------------------------------------

_TIMELINE_ACTIONS = (
    "upload.start",
    "forward.pipelined",
    "upload.complete",
    "forward.delivered",
    "forward.failed",
    "admin.upload_retry",
    "admin.upload_cancel",
    "upload.cancel",
    "upload.expire",
    "upload.purge",
    "report.assign",
    "report.sign",
    "report.amend",
    "report.pacs_received",
    "report.pacs_skipped",
    "report.pacs_stored",
    "report.pacs_failed",
)


def _steps(event: AuditEvent, instances: int, *, forwarded: bool) -> list[TimelineStep]:
    at, details = event.at, event.details or {}

    def step(name: str, detail: str | None = None) -> TimelineStep:
        return TimelineStep(step=name, at=at, detail=detail)

    match event.action:
        case "upload.start":
            return [step("started")]
        case "forward.pipelined":
            return [step("pipelined", "sending verified instances to the PACS while uploading")]
        case "upload.complete":
            accepted = int(details.get("accepted_files", 0))
            refused = int(details.get("rejected_files", 0))
            codes = ", ".join(details.get("codes", []))
            pipelined = int(details.get("pipelined", 0))
            if event.outcome == "rejected":
                why = [codes] if codes else []
                why += _at_pacs(details)
                return [step("received"), step("rejected", "; ".join(why) or None)]
            verdict = f"accepted {accepted} of {accepted + refused} files"
            if refused:
                verdict += f" (refused: {codes})"
            if pipelined:
                verdict += f"; {pipelined} instances queued for the PACS while uploading"
            queued = [step("queued")] if forwarded else []
            return [step("received"), step("validated", verdict), *queued]
        case "forward.delivered":
            confirmed = int(details.get("confirmed", 0))
            return [step("pacs_confirmed", f"PACS confirmed {confirmed}/{instances or confirmed}")]
        case "forward.failed" if details.get("reason") == "target_removed":
            removed = f"its PACS target {details.get('target')!r} was removed from the settings"
            if details.get("kind") == "report":
                return [step("report_write_back_failed", removed)]
            return [step("failed", removed)]
        case "forward.failed":
            return [step("failed", f"{details.get('failed', 0)} instances refused by the PACS")]
        case "admin.upload_retry":
            return [step("retried")]
        case "admin.upload_cancel" | "upload.cancel":
            return [step("cancelled", "; ".join(_at_pacs(details)) or None)]
        case "upload.expire":
            hours = details.get("idle_hours")
            idle = f" for {hours:g} hours" if isinstance(hours, int | float) else ""
            return [step("expired", f"unfinished: no data received{idle}")]
        case "upload.purge" if details.get("reason") == "expired":
            return [step("purged", "the parts received were deleted")]
        case "upload.purge":
            return [
                step(
                    "purged",
                    "the gateway's copy of the study was deleted (retention); the PACS holds it",
                )
            ]
        case "report.assign":
            return [step("report_assigned")]
        case "report.sign":
            return [step("report_ready")]
        case "report.amend":
            return [step("report_amended", f"version {details.get('version')}")]
        case "report.pacs_received":
            return [step("report_ready", "from the PACS")]
        case "report.pacs_skipped":
            return [step("report_from_pacs_skipped", str(details.get("reason")))]
        case "report.pacs_stored":
            return [step("report_stored_in_pacs", f"version {details.get('version')}")]
        case "report.pacs_failed":
            return [step("report_refused_by_pacs", f"version {details.get('version')}")]
    return []


def _at_pacs(details: dict[str, Any]) -> list[str]:
    """What a cancel or a rejection left at the PACS (pipelined relay): it keeps them."""
    count = int(details.get("already_at_pacs", 0))
    return [f"{count} instances already at the PACS"] if count else []


async def upload_timeline(
    db: Database, *, upload_id: uuid.UUID, user: User, actor: Actor
) -> Timeline:
    """Every step of an upload's journey with its time, from "started" to "report amended"
    (from the audit log, the upload and its report). The uploader's and administrators'."""
    async with db.read_sessionmaker() as session, session.begin():
        upload = await uploads.get_upload(session, upload_id=upload_id, user=user)
        study = await uploads.study_overview(session, upload_id=upload.id)
        report = await repository.report_of_upload(session, upload.id)
        objects = [("upload", str(upload.id))]
        if report is not None:
            objects.append(("report", str(report.id)))
        events = await audit.history(session, objects=objects, actions=_TIMELINE_ACTIONS)
    forwarded = study.target is not None  # a forward job was written: the study was queued
    steps = [s for e in events for s in _steps(e, study.instance_count, forwarded=forwarded)]
    if report is not None:
        steps.append(TimelineStep(step="report_opened", at=report.created_at))
    steps.sort(key=lambda s: s.at)  # stable: a record's steps keep their order
    await record_alone(
        db.sessionmaker,
        actor=actor,
        action="upload.timeline",
        object_type="upload",
        object_id=upload.id,
        study_instance_uid=upload.study_instance_uid,
    )
    return Timeline(
        upload_id=upload.id,
        status=study.status.value,
        steps=steps,
        forwarding_retries=study.attempts,
        last_error=study.last_error,
    )
