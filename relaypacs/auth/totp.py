"""TOTP second factor (RFC 6238, pyotp): secrets encrypted at rest, single-use codes, recovery
codes stored as keyed hashes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING

import pyotp
import segno
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from relaypacs.errors import GatewayError

if TYPE_CHECKING:
    from relaypacs.auth.models import User
    from relaypacs.config import Settings

logger = logging.getLogger("relaypacs.auth")

# One step either side: a phone clock 30 s off still works, nothing more.
DRIFT_STEPS = 1
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i look-alikes


class TotpUnreadable(GatewayError):
    status_code = 409
    code = "totp_reset_required"
    message = "Your second factor cannot be checked; ask an administrator to reset it."


def _recovery_hmac_key(key: str) -> bytes:
    return hashlib.sha256(b"relaypacs-recovery-codes:" + key.encode()).digest()


class TotpCipher:
    """Encrypts TOTP secrets (Fernet: AES-128-CBC + HMAC-SHA256) and keys the recovery code
    hashes, so that neither is usable from a copy of the database alone.

    Keys rotate: `key` encrypts, `key` and the `previous` keys decrypt (MultiFernet), and
    `rotate` re-encrypts a secret under `key` (`relaypacs users rotate-totp-key` does it for
    every stored one). Recovery codes are one-way keyed hashes and cannot be re-keyed: a code
    hashed under a previous key is accepted while that key is configured."""

    def __init__(self, key: str, previous: tuple[str, ...] = ()) -> None:
        keys = (key, *(k for k in previous if k != key))
        self._current = Fernet(key)
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._hmac_keys = [_recovery_hmac_key(k) for k in keys]

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, stored: str) -> str:
        try:
            return self._fernet.decrypt(stored.encode()).decode()
        except InvalidToken:
            # The key changed (or differs between replicas): the user must be reset.
            logger.error("a TOTP secret cannot be decrypted: is the TOTP encryption key right?")
            raise TotpUnreadable() from None

    def is_current(self, stored: str) -> bool:
        """Whether the stored secret is encrypted with the current key."""
        try:
            self._current.decrypt(stored.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, stored: str) -> str:
        """The stored secret encrypted with the current key (TotpUnreadable: no configured
        key decrypts it)."""
        try:
            return self._fernet.rotate(stored.encode()).decode()
        except InvalidToken:
            raise TotpUnreadable() from None

    def recovery_code_hash(self, code: str) -> str:
        """The hash a new recovery code is stored as (under the current key)."""
        return self._recovery_hash(self._hmac_keys[0], code)

    def recovery_code_hashes(self, code: str) -> list[str]:
        """The hashes a presented recovery code may be stored as: under each configured key."""
        return [self._recovery_hash(key, code) for key in self._hmac_keys]

    @staticmethod
    def _recovery_hash(key: bytes, code: str) -> str:
        return hmac.new(key, normalise_recovery_code(code).encode(), "sha256").hexdigest()


def totp_required(settings: Settings, user: User) -> bool:
    """Whether the user's role must sign in with a second factor (RELAYPACS_TOTP_REQUIRED_ROLES)."""
    return user.role.value in settings.totp_required_roles


def new_secret() -> str:
    return pyotp.random_base32()  # 160 bits, the RFC's recommendation


def provisioning_uri(secret: str, *, username: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def qr_code_svg_data_uri(uri: str) -> str:
    """The otpauth:// URI as a QR code, an SVG data: URI ready for an <img src>."""
    svg = segno.make(uri, error="m").svg_inline(scale=4)
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def matching_step(secret: str, code: str, *, last_step: int | None, now: dt.datetime) -> int | None:
    """The time step whose code this is (within the drift window), or None. A step at or
    before `last_step` never matches: each code is accepted once."""
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        # Compare all of them (constant work); keep the match.
        if hmac.compare_digest(totp.generate_otp(step), code) and found is None:
            found = step
    if found is None or (last_step is not None and found <= last_step):
        return None
    return found


def new_recovery_codes() -> list[str]:
    """Ten codes of 16 characters (~79 bits each), shown once as xxxx-xxxx-xxxx-xxxx."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def normalise_recovery_code(code: str) -> str:
    return "".join(c for c in code.lower() if c.isalnum())
