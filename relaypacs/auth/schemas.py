"""Request and response shapes of the auth endpoints. Requests forbid unknown fields (422):
no body can carry a role, an owner or a status."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict, Field

from relaypacs.auth.models import Role
from relaypacs.fields import Line


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Line = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    refresh_in_body: bool = Field(
        default=False,
        description="Also return the refresh token in the body (CLI). Browsers get it only "
        "as an HttpOnly cookie.",
    )


class TotpLoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mfa_token: Line = Field(min_length=1, max_length=4096)
    code: Line | None = Field(default=None, min_length=1, max_length=16)
    recovery_code: Line | None = Field(default=None, min_length=1, max_length=64)
    refresh_in_body: bool = False


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: Line | None = Field(
        default=None, min_length=1, max_length=256, description="Default: the cookie."
    )


class PasswordChangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class TotpEnrolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(
        min_length=1,
        max_length=1024,
        description="The current password: a stolen access token alone cannot bind a second "
        "factor of the thief's to the account.",
    )


class TotpCodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Line = Field(min_length=1, max_length=16)


class TokenResponse(BaseModel):
    """After the password: either tokens, or (TOTP enrolled) `mfa_required` with an
    `mfa_token` for POST /auth/totp. The two `*_required` flags say that the tokens only allow
    changing the password, or enrolling TOTP, until that is done."""

    access_token: str | None = None
    token_type: str = "bearer"  # noqa: S105 (a token type, not a secret)
    expires_in: int | None = None
    refresh_token: str | None = None
    mfa_required: bool = False
    mfa_token: str | None = None
    password_change_required: bool = False
    totp_enrolment_required: bool = False


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    username: str
    role: Role
    totp_enabled: bool = False
    must_change_password: bool = False


class TotpEnrolment(BaseModel):
    secret: str = Field(description="For typing into an app that cannot scan the QR code.")
    otpauth_uri: str
    qr_code: str = Field(description="The otpauth URI as an SVG image (a data: URI).")


class RecoveryCodes(BaseModel):
    recovery_codes: list[str] = Field(description="Each works once; shown only now.")


class SessionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    created_at: dt.datetime
    last_used_at: dt.datetime
    expires_at: dt.datetime
    client_ip: str | None
    user_agent: str | None
    current: bool = Field(
        default=False, description="The session of the access token that asked (one's own list)."
    )
