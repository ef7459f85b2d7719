"""A PACS target: a DICOMweb server the gateway forwards to, with its authentication,
timeouts, batching and how delivery is verified (`Settings.pacs_targets`, or the single
target of the RELAYPACS_PACS_* settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

MiB = 1 << 20


class PacsTarget(BaseModel):
    """A DICOMweb server the gateway forwards to (STOW-RS) and verifies against (QIDO-RS)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="pacs", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(description="DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web")
    profile: Literal["orthanc", "dcm4chee", "generic"] = "generic"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(default=None, description="Bearer token (instead of basic).")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    verify_tls: bool = True
    ca_file: Path | None = None
    max_in_flight: int = Field(default=5, ge=1, le=64)
    batch_instances: int = Field(default=10, ge=1, le=1000)
    batch_bytes: int = Field(default=64 * MiB, ge=MiB)
    verify: Literal["uids", "sample", "content"] | None = Field(
        default=None,
        description="How delivery is verified: `uids` (QIDO-RS lists every SOP Instance UID), "
        "`content` (also the bytes the PACS holds, every instance: the stored file's MD5 "
        "through Orthanc's REST API with the orthanc profile, else a WADO-RS retrieval in the "
        "original transfer syntax compared by SHA-256), `sample` (content, for `verify_sample` "
        "instances of each study). Default: content for the orthanc profile, else uids.",
    )
    verify_sample: int = Field(default=10, ge=1, le=10_000)
    rest_url: str | None = Field(
        default=None,
        description="Orthanc's REST API root, for content verification (default: `url` "
        "without its trailing /dicom-web).",
    )
    all_or_nothing: bool = Field(
        default=False,
        description="Take a study whole or not at all: one refused file refuses the study "
        "(otherwise its valid instances go on without the refused files).",
    )

    @property
    def verify_mode(self) -> Literal["uids", "sample", "content"]:
        if self.verify is not None:
            return self.verify
        return "content" if self.profile == "orthanc" else "uids"

    @property
    def orthanc_rest_url(self) -> str:
        if self.rest_url is not None:
            return self.rest_url
        return self.url.removesuffix("/dicom-web")

    @field_validator("url", "rest_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_auth(self) -> PacsTarget:
        if self.token is not None and self.username is not None:
            raise ValueError("set either a token or a username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("basic authentication needs both username and password")
        return self
