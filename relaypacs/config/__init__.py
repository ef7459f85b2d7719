"""One settings object for the gateway: environment (RELAYPACS_*) and an optional TOML file.
A PACS target's own settings (one per DICOMweb server) are `pacs_target.PacsTarget`."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from relaypacs.config.pacs_target import MiB, PacsTarget

__all__ = ["ConfigError", "MiB", "PacsTarget", "Settings", "load_settings"]

CONFIG_FILE_ENV = "RELAYPACS_CONFIG_FILE"


# A list from the environment as comma-separated values (or a JSON list), or a TOML array.
CommaList = Annotated[list[str], NoDecode]


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _keys(value: SecretStr | list[SecretStr] | None) -> list[SecretStr]:
    """A key setting's keys: none, the one, or the list of previous ones."""
    return [] if value is None else value if isinstance(value, list) else [value]


class ConfigError(Exception):
    """The configuration is invalid; the message lists every bad value, one per line."""


class Settings(BaseSettings):
    """Gateway configuration.

    Every field can be set as an environment variable `RELAYPACS_<FIELD>` (upper case) or in the
    TOML file named by `RELAYPACS_CONFIG_FILE`; the environment wins over the file.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELAYPACS_", extra="forbid", case_sensitive=False, validate_default=True
    )

    data_dir: Path = Field(
        default=Path("data"),
        description="Directory for the embedded database, the filesystem store and secrets.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = Field(default=None, description="URL users reach the gateway at.")

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL; default: SQLite (WAL) under data_dir. "
        "Production: postgresql+asyncpg://user:pass@host/db",
    )
    auto_migrate: bool = Field(default=True, description="Apply database migrations at start.")

    storage: Literal["fs", "s3"] = "fs"
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = ""
    s3_create_bucket: bool = False

    secret_key: SecretStr | None = Field(
        default=None,
        description="Key that signs access tokens (at least 32 characters). Default: generated "
        "once and kept in data_dir/secret_key. Set it explicitly when running several replicas.",
    )
    previous_secret_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default=[],
        description="Signing keys of before a rotation (comma-separated, or a JSON list): "
        "tokens they signed are still accepted until they expire; new ones are signed with "
        "secret_key. Drop them once the longest token lifetime has passed (docs/operations.md).",
    )
    access_token_minutes: float = Field(
        default=15,
        gt=0,
        le=24 * 60,
        description="Access token lifetime. Fractions are allowed (0.05 = 3 s), e.g. for tests "
        "of clients that must refresh during a long upload.",
    )
    refresh_idle_minutes: int = Field(
        default=8 * 60,
        ge=1,
        description="A session ends when its refresh token has not been used for this long.",
    )
    refresh_absolute_minutes: int = Field(
        default=7 * 24 * 60,
        ge=1,
        description="A session ends this long after the login, however much it is used.",
    )
    mfa_pending_minutes: int = Field(
        default=5, ge=1, le=60, description="Time to enter the TOTP code after the password."
    )
    secure_cookies: bool = Field(
        default=True,
        description="Mark the refresh cookie Secure (sent over HTTPS only). Turn off only for "
        "a gateway reached over plain HTTP on localhost.",
    )

    audit_head_log_minutes: float = Field(
        default=60,
        gt=0,
        description="How often the audit chain's head (id and hash of the newest record) is "
        "written to the log, for `relaypacs audit verify --head` to detect a truncation.",
    )
    web_dir: Path | None = Field(
        default=None,
        description="The built web app the gateway serves at / (index.html and assets/). "
        "Default: web/dist next to the relaypacs package, when it has been built "
        "(scripts/web.sh build; scripts/run.sh does it).",
    )
    api_docs: bool = Field(
        default=False,
        description="Publish the OpenAPI document and the interactive API documentation "
        "(/api/v1/openapi.json, /api/v1/docs). Off by default: a production gateway need not "
        "describe itself to anyone who asks.",
    )

    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db: token revocations and rate limits shared by all "
        "replicas. Default: none (embedded mode, kept in this process).",
    )
    redis_prefix: str = Field(
        default="relaypacs:",
        pattern=r"^[A-Za-z0-9:_.-]{0,64}$",
        description="Prefix of every Redis key this gateway writes.",
    )

    totp_encryption_key: SecretStr | None = Field(
        default=None,
        description="Fernet key (urlsafe base64 of 32 bytes) that encrypts TOTP secrets at "
        "rest. Default: generated once and kept in data_dir/totp_key. Set it explicitly when "
        "running several replicas.",
    )
    totp_previous_encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default=[],
        description="TOTP encryption keys of before a rotation (comma-separated Fernet keys): "
        "secrets they encrypted are still read, until `relaypacs users rotate-totp-key` has "
        "encrypted every one with totp_encryption_key; recovery codes made under them keep "
        "working while they are configured.",
    )
    totp_required_roles: list[Literal["clinician", "radiologist", "admin"]] = Field(
        default=["admin", "radiologist"],
        description="Roles that must use a TOTP second factor: until they have enrolled, their "
        "tokens only allow the enrolment.",
    )
    totp_issuer: str = Field(default="RelayPACS", min_length=1, max_length=64)

    # Rate limits ("N/second|minute|hour", see the `limits` library's notation).
    rate_limit_login_ip: str = Field(
        default="60/minute",
        description="Login attempts per client address (a whole site behind NAT may share one).",
    )
    rate_limit_login_account_ip: str = Field(
        default="5/minute", description="Failed logins per account from one client address."
    )
    rate_limit_login_account: str = Field(
        default="20/minute", description="Failed logins per account from all addresses."
    )
    rate_limit_totp_ip: str = Field(default="30/minute", description="TOTP codes per address.")
    rate_limit_totp_account: str = Field(
        default="5/minute", description="Wrong TOTP or recovery codes per account."
    )
    rate_limit_upload_init: str = Field(default="120/minute", description="Uploads per user.")
    rate_limit_upload_chunk: str = Field(default="6000/minute", description="Chunks per user.")

    # The HTTP surface (relaypacs/middleware.py).
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) allowed to call the API from a browser; "
        "empty: CORS closed. Comma-separated in the environment.",
    )
    trusted_proxies: CommaList = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are "
        "believed: the client address of rate limits and audit records, and https for "
        "Strict-Transport-Security behind a TLS-terminating proxy. Default: none. "
        "Comma-separated in the environment.",
    )
    max_request_body: int = Field(
        default=MiB,
        ge=1024,
        le=64 * MiB,
        description="Largest request body in bytes, but for chunks (bounded by chunk_size).",
    )

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

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Operations (relaypacs/telemetry, relaypacs/ops).
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json`: one JSON object per log line, for log shippers."
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that Prometheus sends to read /metrics. Default: none, and "
        "then /metrics answers only clients on the loopback interface.",
    )
    sentry_dsn: SecretStr | None = Field(
        default=None, description="Report unexpected errors to Sentry (scrubbed of patient data)."
    )
    sentry_environment: str = Field(default="production", max_length=64)
    sentry_traces_sample_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of requests traced to Sentry."
    )
    stored_chunks_check_minutes: float = Field(
        default=60,
        gt=0,
        description="How often the chunks of unfinished uploads are checked against the object "
        "storage: chunks it lost (restored from an older copy, emptied) are asked for again.",
    )
    # The scheduled jobs (relaypacs/jobs.py): each runs on one replica per period.
    scheduler: bool = Field(default=True, description="Take part in running scheduled jobs.")
    scheduler_lease_seconds: float = Field(
        default=60, ge=1, description="A run's hold on its job; a dead replica's runs out."
    )
    upload_expire_hours: float = Field(
        default=24, gt=0, description="An unfinished upload with no chunk for this long expires."
    )
    upload_expiry_check_minutes: float = Field(default=15, gt=0)
    retention_days: float = Field(
        default=7, gt=0, description="The stored bytes of a delivered study are deleted after."
    )
    retention_check_minutes: float = Field(default=60, gt=0)
    sweep_minutes: float = Field(
        default=60, gt=0, description="Expired sessions, tokens and revocations are deleted."
    )
    read_notification_days: float = Field(default=30, gt=0)
    daily_stats_minutes: float = Field(default=60, gt=0)
    health_timeout_seconds: float = Field(
        default=0.8,
        gt=0,
        le=10,
        description="How long each readiness check waits for its dependency.",
    )

    # The PACS. One target from RELAYPACS_PACS_URL (+ _USERNAME, _PASSWORD or _TOKEN, _PROFILE),
    # or several as [[pacs_targets]] tables in the configuration file.
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

    # Reports and notifications.
    report_auto_assign: bool = Field(
        default=False,
        description="Assign each new report to a radiologist by rule: round robin among the "
        "active radiologists registered for the study's modality (all active radiologists "
        "where none is).",
    )
    report_sync_minutes: float = Field(
        default=5.0,
        gt=0,
        description="How often the scheduler asks each PACS by QIDO-RS for reports (a "
        "Structured Report or an Encapsulated PDF) added to the studies the gateway delivered "
        "whose report is not ready yet.",
    )
    pacs_viewer_url: str | None = Field(
        default=None,
        description="The PACS viewer's URL for one study, with {study_instance_uid} in it, e.g. "
        "http://pacs:8042/stone-webviewer/index.html?study={study_instance_uid}",
    )
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    sse_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A stream is closed after this long (the browser "
        "reconnects with Last-Event-ID).",
    )
    smtp_host: str | None = Field(default=None, description="SMTP server: email is off without.")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_from: str = Field(default="relaypacs@localhost", min_length=3, max_length=320)
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    smtp_retry_delays: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0],
        description="Seconds between the attempts of one email (the last one repeated).",
    )
    smtp_max_attempts: int = Field(
        default=8,
        ge=1,
        description="An email not accepted after this many attempts is marked failed "
        "(logged and audited).",
    )
    smtp_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        description="At most this long between two looks at the email outbox (a replica "
        "finds the emails queued by the others).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with 'postgresql+asyncpg://' (production) or 'sqlite+aiosqlite://'"
            )
        return value

    @field_validator(
        "cors_origins",
        "trusted_proxies",
        "previous_secret_keys",
        "totp_previous_encryption_keys",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an origin like https://pacs.example.org")
            if origin.rstrip("/").count("/") > 2:
                raise ValueError(f"{origin!r}: an origin has no path")
        return [origin.rstrip("/") for origin in value]

    @field_validator("secret_key", "previous_secret_keys")
    @classmethod
    def _check_secret_keys(cls, value: Any) -> Any:
        for key in _keys(value):
            if len(key.get_secret_value()) < 32:
                raise ValueError("must be at least 32 characters long")
        return value

    @field_validator("totp_encryption_key", "totp_previous_encryption_keys")
    @classmethod
    def _check_totp_keys(cls, value: Any) -> Any:
        from cryptography.fernet import Fernet

        for key in _keys(value):
            try:
                Fernet(key.get_secret_value())
            except ValueError:
                raise ValueError(
                    "must be a Fernet key: urlsafe base64 of 32 bytes (44 characters)"
                ) from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return value

    @field_validator("pacs_viewer_url")
    @classmethod
    def _check_viewer_url(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.startswith(("http://", "https://")):
                raise ValueError("must start with http:// or https://")
            if "{study_instance_uid}" not in value:
                raise ValueError("must hold {study_instance_uid}")
        return value

    @field_validator(
        "rate_limit_login_ip",
        "rate_limit_login_account_ip",
        "rate_limit_login_account",
        "rate_limit_totp_ip",
        "rate_limit_totp_account",
        "rate_limit_upload_init",
        "rate_limit_upload_chunk",
    )
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError("must look like '10/minute' or '5 per 30 seconds'") from None
        return value

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("storage is 's3' but RELAYPACS_S3_BUCKET is not set")
        return self

    @model_validator(mode="after")
    def _check_targets(self) -> Settings:
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

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'relaypacs.db').resolve()}"

    @property
    def resolved_web_dir(self) -> Path | None:
        """The web app to serve: web_dir, or the checkout's web/dist once built; None: none."""
        directory = self.web_dir or Path(__file__).resolve().parent.parent / "web" / "dist"
        return directory if (directory / "index.html").is_file() else None

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def storage_root(self) -> Path:
        return self.data_dir / "objects"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    def signing_key(self) -> str:
        """The token signing key: configured, or generated once and kept (0600) in data_dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        return self._kept_secret("secret_key", lambda: secrets.token_urlsafe(48))

    def previous_signing_keys(self) -> tuple[str, ...]:
        return tuple(key.get_secret_value() for key in self.previous_secret_keys)

    def previous_totp_keys(self) -> tuple[str, ...]:
        return tuple(key.get_secret_value() for key in self.totp_previous_encryption_keys)

    def totp_key(self) -> str:
        """The key that encrypts TOTP secrets: configured, or generated once and kept (0600)."""
        if self.totp_encryption_key is not None:
            return self.totp_encryption_key.get_secret_value()
        from cryptography.fernet import Fernet

        return self._kept_secret("totp_key", lambda: Fernet.generate_key().decode())

    def _kept_secret(self, name: str, generate: Callable[[], str]) -> str:
        path = self.data_dir / name
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it in between: use theirs
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(generate())
        return path.read_text().strip()


def load_settings(**overrides: Any) -> Settings:
    """Load and validate the settings; raise ConfigError with one clear line per bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "configuration"
            variable = f"RELAYPACS_{field.upper()}" if error["loc"] else field
            lines.append(f"{variable}: {error['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
