"""The settings of signing in and its keys: the token signing keys, session lifetimes, TOTP
(its encryption keys, who must use it) and the rate limits of logins and uploads. A key not
configured is generated once and kept in data_dir."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from relaypacs.config.base import SettingsBase, split_list


def _keys(value: SecretStr | list[SecretStr] | None) -> list[SecretStr]:
    """A key setting's keys: none, the one, or the list of previous ones."""
    return [] if value is None else value if isinstance(value, list) else [value]


class SecuritySettings(SettingsBase):
    """The settings of signing in and its keys (see the module)."""

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

    @field_validator("previous_secret_keys", "totp_previous_encryption_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return split_list(value)

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
