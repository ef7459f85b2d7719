"""What the gateway answers about an upload, as the client reads it (docs/api.md): the upload,
its files, its forwarding, the outcome of starting it and of a chunk."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file of an upload as the server sees it."""

    index: int
    name: str
    size: int
    sha256: str
    chunk_count: int
    missing_chunks: tuple[int, ...]
    status: str
    kind: str | None
    error: Any
    # Where the file stands with the PACS: pending, sent, confirmed, failed (None: not queued).
    forward_status: str | None = None
    forward_error: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteFile:
        forward_status = data.get("forward_status")
        forward_error = data.get("forward_error")
        return cls(
            index=int(data["index"]),
            name=str(data.get("name", "")),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            chunk_count=int(data.get("chunk_count", 0)),
            missing_chunks=tuple(int(c) for c in data.get("missing_chunks") or ()),
            status=str(data.get("status", "")),
            kind=data.get("kind"),
            error=data.get("error"),
            forward_status=None if forward_status is None else str(forward_status),
            forward_error=None if forward_error is None else str(forward_error),
        )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class RemoteForwarding:
    """``UploadRead.forwarding``: where the study stands with the PACS."""

    target: str
    status: str  # of the forwarding job: queued, done, cancelled
    instances: int
    sent: int
    confirmed: int
    failed: int
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    delivered_at: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteForwarding:
        return cls(
            target=str(data.get("target", "")),
            status=str(data.get("status", "")),
            instances=int(data.get("instances") or 0),
            sent=int(data.get("sent") or 0),
            confirmed=int(data.get("confirmed") or 0),
            failed=int(data.get("failed") or 0),
            attempts=int(data.get("attempts") or 0),
            next_attempt_at=_optional_str(data.get("next_attempt_at")),
            last_error=_optional_str(data.get("last_error")),
            delivered_at=_optional_str(data.get("delivered_at")),
        )


@dataclass(frozen=True, slots=True)
class RemoteUpload:
    """``UploadRead`` (or ``UploadSummary``, without files)."""

    id: str
    status: str
    study_instance_uid: str
    study_hash: str
    chunk_size: int
    file_count: int
    instance_count: int | None
    total_bytes: int
    received_bytes: int
    files: tuple[RemoteFile, ...]
    # Files that verification refused (None before verification, or from an older gateway).
    refused_files: int | None = None
    # None when the study is not queued for a PACS (or in an UploadSummary).
    forwarding: RemoteForwarding | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteUpload:
        instance_count = data.get("instance_count")
        forwarding = data.get("forwarding")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            study_instance_uid=str(data.get("study_instance_uid", "")),
            study_hash=str(data.get("study_hash", "")),
            chunk_size=int(data.get("chunk_size", 0)),
            file_count=int(data.get("file_count", 0)),
            instance_count=None if instance_count is None else int(instance_count),
            total_bytes=int(data.get("total_bytes", 0)),
            received_bytes=int(data.get("received_bytes", 0)),
            files=tuple(RemoteFile.from_json(f) for f in data.get("files") or ()),
            refused_files=None if data.get("refused_files") is None else int(data["refused_files"]),
            forwarding=RemoteForwarding.from_json(forwarding)
            if isinstance(forwarding, Mapping)
            else None,
        )

    @property
    def missing_chunks(self) -> list[tuple[int, int]]:
        """Every (file_index, chunk_index) the server still needs."""
        return [(f.index, c) for f in self.files for c in f.missing_chunks]


class StartOutcome(StrEnum):
    CREATED = "created"  # 201
    RESUMED = "resumed"  # 200: the same study in progress for this user
    ALREADY_DELIVERED = "already_delivered"  # 409 study_already_delivered


@dataclass(frozen=True, slots=True)
class StartResult:
    outcome: StartOutcome
    upload: RemoteUpload


@dataclass(frozen=True, slots=True)
class ChunkReceipt:
    file_index: int
    chunk_index: int
    size: int
    already_stored: bool


@dataclass(frozen=True)
class BatchPartReceipt:
    """What the gateway did with one part of a chunk batch."""

    file_index: int
    chunk_index: int
    status: str  # stored, already_stored, refused
    code: str | None = None  # why refused: content_digest_mismatch, chunk_conflict
    message: str | None = None
