"""The report domain's request and answer shapes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from relaypacs.fields import PARAGRAPHS_DOC, multi_line
from relaypacs.reports.models import ReportStatus
from relaypacs.uploads.schemas import StudyMetadata

ReportText = Annotated[
    str, StringConstraints(max_length=20_000), AfterValidator(multi_line), PARAGRAPHS_DOC
]
# A DICOM modality code (CS: upper case letters, digits, underscore; up to 16 characters).
Modality = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9_ ]{1,16}$")]


class DraftSave(BaseModel):
    findings: ReportText | None = None
    impression: ReportText | None = None


class ReportSign(BaseModel):
    """Sign the working copy; fields given here replace it first."""

    findings: ReportText | None = None
    impression: ReportText | None = None


class ReportAmend(BaseModel):
    findings: ReportText
    impression: ReportText
    reason: Annotated[
        str,
        StringConstraints(min_length=1, max_length=2_000),
        AfterValidator(multi_line),
        PARAGRAPHS_DOC,
    ]


class ReportAssign(BaseModel):
    radiologist_id: uuid.UUID


class ReportVersionRead(BaseModel):
    version: int
    findings: str
    impression: str
    signed_by: uuid.UUID | None = Field(
        description="Who signed it in the gateway; null for a report found in the PACS."
    )
    signed_at: dt.datetime
    reason: str | None
    source: Literal["gateway", "pacs"] = Field(
        default="gateway",
        description="Where it was written: signed in the gateway, or found in the PACS (a "
        "Structured Report or an Encapsulated PDF added to the study there).",
    )
    source_instance_uid: str | None = Field(
        default=None, description="From the PACS: the SOP Instance UID it was read from."
    )
    pacs_receipt_id: str | None = Field(
        default=None,
        description="Signed in the gateway and written back: the SOP Instance UID of its "
        "Encapsulated PDF instance, once the PACS lists it in the study.",
    )


class ReportSummary(BaseModel):
    id: uuid.UUID
    upload_id: uuid.UUID
    status: ReportStatus
    study_instance_uid: str | None
    modality: str | None
    study_date: str | None
    metadata: StudyMetadata
    radiologist_id: uuid.UUID | None
    assigned_at: dt.datetime | None
    version: int
    created_at: dt.datetime
    ready_at: dt.datetime | None


class ReportRead(ReportSummary):
    draft: DraftSave | None = Field(
        default=None,
        description="The working copy: shown to the assigned radiologist and administrators "
        "only, never to the uploader.",
    )
    latest: ReportVersionRead | None = Field(
        default=None, description="The latest signed version (what the report says)."
    )
    versions: list[ReportVersionRead] = Field(
        default_factory=list, description="Every signed version, oldest first."
    )
    pacs_receipt_id: str | None = Field(
        default=None,
        description="The SOP Instance UID of the latest version written back to the PACS "
        "(an Encapsulated PDF instance in the study), once the PACS lists it.",
    )


class ReportList(BaseModel):
    items: list[ReportSummary]
    total: int


class SeriesRead(BaseModel):
    series_instance_uid: str
    instances: int


class StudyView(BaseModel):
    report_id: uuid.UUID
    upload_id: uuid.UUID
    study_instance_uid: str
    metadata: StudyMetadata
    upload_status: str
    series: list[SeriesRead]
    series_count: int
    instance_count: int
    target: str | None
    confirmed: int
    pacs_confirmed: str = Field(description='"PACS confirmed N/N"')
    delivered_at: dt.datetime | None
    viewer_url: str | None


class AssignmentRuleSet(BaseModel):
    """The automatic assignment rule: on or off, and among whom the round robin turns."""

    enabled: bool
    by_modality: bool = Field(
        description="Round robin among the active radiologists who read the study's modality "
        "(all active radiologists when none does); false: among all active radiologists."
    )


class AssignmentRuleRead(BaseModel):
    enabled: bool
    by_modality: bool
    strategy: Literal["round_robin"] = "round_robin"
    source: Literal["configuration", "administrator"] = Field(
        description="`configuration`: no administrator has set it; RELAYPACS_REPORT_AUTO_ASSIGN "
        "decides (round robin by modality when true)."
    )
    updated_at: dt.datetime | None
    updated_by: str | None = Field(description="The username of the administrator who set it.")
    active_radiologists: int = Field(description="How many the round robin turns among.")


class ModalitiesSet(BaseModel):
    modalities: list[Modality] = Field(max_length=64)


class RadiologistRead(BaseModel):
    id: uuid.UUID
    username: str
    is_active: bool
    modalities: list[str]
    open_reports: int


class RadiologistList(BaseModel):
    items: list[RadiologistRead]


class TimelineStep(BaseModel):
    step: str = Field(
        description="started, pipelined (instances sent to the PACS while uploading), "
        "received, validated, rejected, queued, pacs_confirmed, failed, retried, cancelled, "
        "expired (an unfinished upload received nothing for RELAYPACS_UPLOAD_EXPIRE_HOURS), "
        "purged (its stored bytes deleted: an expired upload's parts, or a delivered study's "
        "copy after RELAYPACS_RETENTION_DAYS), "
        'report_opened, report_assigned, report_ready (detail "from the PACS" when it came from '
        "there), report_amended, report_from_pacs_skipped (an unusable report instance in the "
        "PACS; detail: why), report_stored_in_pacs (written back; detail: the version), "
        "report_refused_by_pacs, report_write_back_failed (its PACS target was removed from "
        "the settings)"
    )
    at: dt.datetime
    detail: str | None = None


class Timeline(BaseModel):
    upload_id: uuid.UUID
    status: str
    steps: list[TimelineStep] = Field(description="Oldest first.")
    forwarding_retries: int = Field(description="Forwarding attempts that failed (retried).")
    last_error: str | None = Field(description="The last forwarding attempt's error, if any.")
