"""Request and response shapes of the upload API (see docs/api.md)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from relaypacs.fields import LINE_DOC, Line, single_line
from relaypacs.uploads.models import FileStatus, ForwardStatus, UploadStatus

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
Uid = Annotated[str, StringConstraints(max_length=64, pattern=UID_PATTERN)]
Sha256Hex = Annotated[
    str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-fA-F]{64}$")
]
# Study details as the files carry them: one line, no control character (NUL: PostgreSQL
# refuses it, and SQLite stored it).
# The bounds of a chunk size, the server's setting (RELAYPACS_CHUNK_SIZE) as a client's request.
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
ShortText = Annotated[str, StringConstraints(max_length=256), AfterValidator(single_line), LINE_DOC]


class StudyMetadata(BaseModel):
    """Study details read by the client from the files (PHI: stored, never logged)."""

    model_config = ConfigDict(extra="forbid")
    patient_name: ShortText | None = None
    patient_id: ShortText | None = None
    study_date: ShortText | None = None
    modality: ShortText | None = None
    study_description: ShortText | None = None
    accession_number: ShortText | None = None


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Line = Field(min_length=1, max_length=255)
    size: int = Field(ge=1)
    sha256: Sha256Hex

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study_instance_uid: Uid
    metadata: StudyMetadata = Field(default_factory=StudyMetadata)
    files: list[ManifestFile] = Field(min_length=1)
    all_or_nothing: bool = Field(
        default=False,
        description="Strict mode: one refused file refuses the whole study. By default the "
        "valid instances go on without the refused files (partial acceptance).",
    )
    chunk_size: int | None = Field(
        default=None,
        ge=MIN_CHUNK_SIZE,
        le=MAX_CHUNK_SIZE,
        description="The chunk size the client asks for (bytes): smaller chunks cost less when "
        "a connection is cut. The server's setting is the largest it grants (a larger request "
        "gets it) and its default; the answer's `chunk_size` is the one to use.",
    )


class FileError(BaseModel):
    code: str
    message: str


class ForwardingRead(BaseModel):
    """Where the study stands with the PACS."""

    target: str
    status: str
    instances: int
    sent: int
    confirmed: int
    failed: int
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    delivered_at: dt.datetime | None


class UploadFileRead(BaseModel):
    index: int
    name: str
    size: int
    sha256: str
    chunk_count: int
    missing_chunks: list[int]
    status: FileStatus
    kind: str | None
    preamble: str | None
    sop_instance_uid: str | None
    error: FileError | None
    forward_status: ForwardStatus | None = None
    forward_error: str | None = None
    duplicate_of: int | None = Field(
        default=None,
        description="Valid, and the same bytes as that file of the upload, which is the one sent.",
    )


class UploadSummary(BaseModel):
    id: uuid.UUID
    status: UploadStatus
    study_instance_uid: str
    study_hash: str
    chunk_size: int
    file_count: int
    instance_count: int | None
    refused_files: int | None = Field(
        description="Files that verification refused (null before verification). With some "
        "refused and the upload accepted, the study goes on without them."
    )
    all_or_nothing: bool
    total_bytes: int
    received_bytes: int
    metadata: StudyMetadata
    created_at: dt.datetime
    updated_at: dt.datetime
    completed_at: dt.datetime | None
    purged_at: dt.datetime | None = Field(
        default=None,
        description="When the gateway deleted the study's stored bytes: expired (abandoned), "
        "or delivered and kept RELAYPACS_RETENTION_DAYS (the PACS holds it). Its details, "
        "verdicts and receipts stay.",
    )


class UploadRead(UploadSummary):
    files: list[UploadFileRead] | None = Field(
        description="Every file with its missing chunks and statuses; null with ?files=false."
    )
    forwarding: ForwardingRead | None = None


class UploadList(BaseModel):
    items: list[UploadSummary]
    total: int


class ChunkStored(BaseModel):
    file_index: int
    chunk_index: int
    size: int
    already_stored: bool


class ChunkBatchPart(BaseModel):
    """One part of a chunk batch, as its header declares it (docs/api.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    file_index: int = Field(ge=0)
    chunk_index: int = Field(ge=0)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the part's bytes")


class ChunkBatchHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    parts: list[ChunkBatchPart] = Field(min_length=1)


class ChunkPartStatus(enum.StrEnum):
    STORED = "stored"
    ALREADY_STORED = "already_stored"  # the same bytes were stored before: nothing to resend
    REFUSED = "refused"  # not stored: see `code`; send it again (digest) or not (conflict)


class ChunkPartResult(BaseModel):
    file_index: int
    chunk_index: int
    size: int
    status: ChunkPartStatus
    code: str | None = Field(
        default=None,
        description="Why a refused part was refused: content_digest_mismatch (the bytes are "
        "not those of its sha256; nothing kept, send it again) or chunk_conflict (that chunk "
        "is stored with other bytes).",
    )
    message: str | None = None


class ChunkBatchStored(BaseModel):
    """The answer to a chunk batch: one result per part, in the order of the request."""

    parts: list[ChunkPartResult]
