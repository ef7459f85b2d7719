"""Tables of the auth domain."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import Boolean, Enum, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false

from relaypacs.audit.models import Actor
from relaypacs.db import Base, UTCDateTime, utcnow
from relaypacs.fields import name_key


class Role(enum.StrEnum):
    CLINICIAN = "clinician"
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


def _username_key(context: DefaultExecutionContext) -> str:
    parameters: dict[str, Any] = context.get_current_parameters()  # type: ignore[no-untyped-call]
    return name_key(parameters["username"])


class User(Base):
    __tablename__ = "user"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # The name's identity (relaypacs.fields.name_key): unique, so `ADMIN` cannot join `admin`.
    username_key: Mapped[str] = mapped_column(
        String(256), unique=True, index=True, default=_username_key, server_default=""
    )
    email: Mapped[str | None] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[Role] = mapped_column(
        Enum(
            Role,
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda e: [m.value for m in e],
        )
    )
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    # Encrypted at rest (Fernet, see auth/totp.py); null until TOTP enrolment starts.
    totp_secret: Mapped[str | None] = mapped_column(Text)
    # True once the first code confirmed the enrolment: only then does login ask for a code.
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The last time step whose code was accepted: each code works once.
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    # In every access token ("ver"): raising it kills all of the user's tokens at once, on every
    # replica, through the user row each request loads anyway (disable, password, role change).
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def actor(self, client_ip: str | None) -> Actor:
        """This user as the actor of an audit record, acting from `client_ip`."""
        return Actor(id=self.id, role=self.role.value, client_ip=client_ip)


class AuthSession(Base):
    """One login: a family of refresh tokens, each replacing the one before (rotation)."""

    __tablename__ = "auth_session"
    __table_args__ = (Index("ix_auth_session_user_id_created_at", "user_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The absolute end, whatever the use; the idle end is last_used_at + the idle timeout.
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))


class RefreshToken(Base):
    """A refresh token, by the SHA-256 of its value (the value itself is never stored)."""

    __tablename__ = "refresh_token"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("auth_session.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when it was exchanged for the next one: presenting it again is reuse (theft).
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RecoveryCode(Base):
    """A one-time TOTP recovery code, by its keyed hash (HMAC-SHA256 with the TOTP key)."""

    __tablename__ = "recovery_code"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("user.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
