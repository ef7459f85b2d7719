"""The server's own settings: where it listens and keeps its data, its database, object
storage and Redis, the web app it serves, and its HTTP surface (relaypacs/middleware.py)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from relaypacs.config.base import CommaList, SettingsBase, split_list
from relaypacs.config.pacs_target import MiB

# The web app served without web_dir: the checkout's own build (scripts/web.sh build), web/dist
# beside the relaypacs package (this module is relaypacs/config/server.py).
CHECKOUT_WEB_DIR = Path(__file__).resolve().parents[2] / "web" / "dist"


class ServerSettings(SettingsBase):
    """The server's own settings (see the module)."""

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

    # Named apart from the other areas' validators: pydantic keeps one validator per name
    # across the bases of Settings.
    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an origin like https://pacs.example.org")
            if origin.rstrip("/").count("/") > 2:
                raise ValueError(f"{origin!r}: an origin has no path")
        return [origin.rstrip("/") for origin in value]

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return value

    @model_validator(mode="after")
    def _check_storage(self) -> Self:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("storage is 's3' but RELAYPACS_S3_BUCKET is not set")
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'relaypacs.db').resolve()}"

    @property
    def resolved_web_dir(self) -> Path | None:
        """The web app to serve: web_dir, or the checkout's web/dist once built; None: none."""
        directory = self.web_dir or CHECKOUT_WEB_DIR
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
