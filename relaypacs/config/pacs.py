"""The settings of the PACS and of forwarding to it: the targets (one from RELAYPACS_PACS_URL
and its companions, or several `[[pacs_targets]]` tables in the configuration file; each one's
own settings are `pacs_target.PacsTarget`), the forwarding worker, its retries and breaker,
and the pipelined relay."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from relaypacs.config.base import SettingsBase
from relaypacs.config.pacs_target import PacsTarget


class PacsSettings(SettingsBase):
    """The settings of the PACS targets and forwarding (see the module)."""

    pacs_url: str | None = None
    pacs_username: str | None = None
    pacs_password: SecretStr | None = None
    pacs_token: SecretStr | None = None
    pacs_profile: Literal["orthanc", "dcm4chee", "generic"] = "generic"
    pacs_verify: Literal["uids", "sample", "content"] | None = None
    pacs_all_or_nothing: bool = False
    pacs_targets: list[PacsTarget] = Field(default_factory=list)
    default_target: str | None = Field(
        default=None, description="Name of the target new studies go to (default: the first)."
    )
    forward_worker: bool = Field(
        default=True, description="Run the forwarding worker in this process."
    )
    forward_retry_delays: list[float] = Field(
        default=[1.0, 2.0, 4.0], description="Seconds before the first retries of a batch."
    )
    forward_retry_interval: float = Field(
        default=300.0, gt=0, description="Seconds between later retries."
    )
    forward_lease_seconds: float = Field(
        default=30.0,
        ge=5,
        description="A worker's hold on a job, renewed every third of it; after a crash the "
        "job is due again once it runs out.",
    )
    forward_poll_seconds: float = Field(default=2.0, gt=0)
    forward_removed_target_grace_seconds: float = Field(
        default=600.0,
        ge=0,
        description="A queued forward job (study or report write-back) whose PACS target is "
        "no longer configured, and that no worker touched for this long, fails with "
        "`target_removed` (an administrator's retry sends a study to the current target).",
    )
    pipeline: bool = Field(
        default=False,
        description="Pipelined relay: an instance whose verdict is final on arrival (a file of "
        "one chunk, early-verified: its SHA-256 that of the manifest, valid DICOM of the "
        "declared study, its SOP Instance UID not yet seen in the upload nor held by the target) "
        "is forwarded while the rest of the study is still uploading. Never for all-or-nothing "
        "studies or targets.",
    )
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _check_targets(self) -> Self:
        if self.pacs_url:
            self.pacs_targets = [
                PacsTarget(
                    name="pacs",
                    url=self.pacs_url,
                    username=self.pacs_username,
                    password=self.pacs_password,
                    token=self.pacs_token,
                    profile=self.pacs_profile,
                    verify=self.pacs_verify,
                    all_or_nothing=self.pacs_all_or_nothing,
                ),
                *self.pacs_targets,
            ]
        names = [t.name for t in self.pacs_targets]
        if len(set(names)) != len(names):
            raise ValueError("two PACS targets have the same name")
        if self.default_target is not None and self.default_target not in names:
            raise ValueError(f"default_target {self.default_target!r} is not a configured target")
        return self

    @property
    def default_target_name(self) -> str | None:
        if self.default_target:
            return self.default_target
        return self.pacs_targets[0].name if self.pacs_targets else None
