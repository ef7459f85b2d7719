"""Identity settings: the TOTP key (configured or generated and kept private), and clear errors
for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from relaypacs.auth.totp import TotpCipher, TotpUnreadable
from relaypacs.config import ConfigError, load_settings


class TestTotpKey:
    def test_generated_once_kept_private_and_stable(self, tmp_path: Path) -> None:
        settings = load_settings(data_dir=tmp_path)
        key = settings.totp_key()
        assert settings.totp_key() == key
        assert (tmp_path / "totp_key").stat().st_mode & 0o777 == 0o600
        Fernet(key)  # a valid Fernet key
        assert load_settings(data_dir=tmp_path).totp_key() == key  # after a restart

    def test_configured_key_is_used_and_the_file_is_not_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key = Fernet.generate_key().decode()
        monkeypatch.setenv("RELAYPACS_TOTP_ENCRYPTION_KEY", key)
        settings = load_settings(data_dir=tmp_path)
        assert settings.totp_key() == key
        assert not (tmp_path / "totp_key").exists()
        cipher = TotpCipher(key)
        stored = cipher.encrypt("JBSWY3DPEHPK3PXP")
        assert "JBSWY3DPEHPK3PXP" not in stored
        assert TotpCipher(key).decrypt(stored) == "JBSWY3DPEHPK3PXP"
        with pytest.raises(TotpUnreadable):
            TotpCipher(Fernet.generate_key().decode()).decrypt(stored)

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("RELAYPACS_TOTP_ENCRYPTION_KEY", "too-short"),
            ("RELAYPACS_REDIS_URL", "http://127.0.0.1:6379"),
            ("RELAYPACS_RATE_LIMIT_LOGIN_IP", "lots"),
            ("RELAYPACS_TOTP_REQUIRED_ROLES", '["superuser"]'),
            ("RELAYPACS_REDIS_PREFIX", "has spaces"),
        ],
    )
    def test_bad_values_are_reported_with_their_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
    ) -> None:
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError, match=variable):
            load_settings(data_dir=tmp_path)

    def test_defaults(self, tmp_path: Path) -> None:
        settings = load_settings(data_dir=tmp_path)
        assert settings.access_token_minutes == 15
        assert set(settings.totp_required_roles) == {"admin", "radiologist"}
        assert settings.redis_url is None
        assert settings.trusted_proxies == []
