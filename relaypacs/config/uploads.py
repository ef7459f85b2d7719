"""The settings of uploads: chunks and the memory their bodies take, the manifest's limits,
and the workers that validate DICOM files."""

from __future__ import annotations

from pydantic import Field

from relaypacs.config.base import SettingsBase
from relaypacs.config.pacs_target import MiB


class UploadSettings(SettingsBase):
    """The settings of uploads (see the module)."""

    chunk_size: int = Field(default=8 * MiB, ge=64 * 1024, le=64 * MiB)
    chunk_buffer_mb: int = Field(
        default=128,
        ge=1,
        description="Bytes of chunk bodies held in memory at once (reserved by each body's "
        "length while it is read and stored); more wait.",
    )
    chunk_buffer_user_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="The part of chunk_buffer_mb one user's bodies may hold: a user whose "
        "chunks trickle in over a slow link never holds up the others.",
    )
    chunk_body_idle_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A chunk body of which nothing arrives for this long is given up (408 "
        "body_stalled) and its memory freed.",
    )
    max_files_per_upload: int = Field(default=20_000, ge=1)
    max_file_size: int = Field(default=8 * 1024 * MiB, ge=1)

    dicom_workers: int = Field(default=2, ge=1, le=64)
    dicom_timeout_seconds: float = Field(default=30.0, gt=0)
    dicom_memory_mb: int = Field(default=1024, ge=128)
    dicom_max_inflated_mb: int = Field(default=1024, ge=1)
    dicom_idle_seconds: float = Field(
        default=60.0, gt=0, description="Stop the validation workers after this long unused."
    )
