"""Configuration: one prefix, an optional TOML file, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaypacs.config import ConfigError, load_settings, server
from relaypacs.config.server import CHECKOUT_WEB_DIR


class TestLoadSettings:
    def test_embedded_defaults(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RELAYPACS_DATA_DIR", str(tmp_path))
        settings = load_settings()
        assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'relaypacs.db'}"
        assert settings.storage == "fs"
        assert settings.storage_root == tmp_path / "objects"

    def test_environment_wins_over_the_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = tmp_path / "relaypacs.toml"
        config.write_text('port = 9000\nchunk_size = 1048576\nstorage = "s3"\ns3_bucket = "b"\n')
        monkeypatch.setenv("RELAYPACS_CONFIG_FILE", str(config))
        monkeypatch.setenv("RELAYPACS_PORT", "9100")
        settings = load_settings()
        assert (settings.port, settings.chunk_size, settings.s3_bucket) == (9100, 1 << 20, "b")

    def test_every_bad_value_is_reported_with_its_variable(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RELAYPACS_PORT", "99999")
        monkeypatch.setenv("RELAYPACS_DATABASE_URL", "mysql://x")
        monkeypatch.setenv("RELAYPACS_SECRET_KEY", "short")
        monkeypatch.setenv("RELAYPACS_STORAGE", "ftp")
        with pytest.raises(ConfigError) as caught:
            load_settings()
        message = str(caught.value)
        for variable in (
            "RELAYPACS_PORT",
            "RELAYPACS_DATABASE_URL",
            "RELAYPACS_SECRET_KEY",
            "RELAYPACS_STORAGE",
        ):
            assert variable in message
        assert "short" not in message  # secrets are never echoed

    def test_s3_needs_a_bucket(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RELAYPACS_STORAGE", "s3")
        with pytest.raises(ConfigError, match="S3_BUCKET"):
            load_settings()

    def test_unknown_variables_in_the_file_are_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = tmp_path / "relaypacs.toml"
        config.write_text("prot = 9000\n")
        monkeypatch.setenv("RELAYPACS_CONFIG_FILE", str(config))
        with pytest.raises(ConfigError, match="RELAYPACS_PROT"):
            load_settings()

    def test_generated_signing_key_is_kept_private_and_stable(self, tmp_path: Path) -> None:
        settings = load_settings(data_dir=tmp_path)
        key = settings.signing_key()
        assert len(key) >= 32
        assert settings.signing_key() == key
        assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


class TestWebDir:
    """Without RELAYPACS_WEB_DIR the gateway serves the checkout's own build, web/dist
    (scripts/web.sh build writes it; README, "RELAYPACS_WEB_DIR"), once it is built."""

    def test_the_default_is_the_checkouts_web_app_build(self) -> None:
        assert CHECKOUT_WEB_DIR.name == "dist"
        assert (CHECKOUT_WEB_DIR.parent / "package.json").is_file()  # the web app's folder
        assert (CHECKOUT_WEB_DIR.parent / "vite.config.ts").is_file()

    def test_it_is_served_once_built_and_a_setting_wins(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        built = tmp_path / "checkout" / "web" / "dist"
        monkeypatch.setattr(server, "CHECKOUT_WEB_DIR", built)
        settings = load_settings(data_dir=tmp_path)
        assert settings.resolved_web_dir is None  # not built
        built.mkdir(parents=True)
        (built / "index.html").write_text("<!doctype html>")
        assert settings.resolved_web_dir == built
        chosen = tmp_path / "elsewhere"
        chosen.mkdir()
        (chosen / "index.html").write_text("<!doctype html>")
        assert load_settings(data_dir=tmp_path, web_dir=chosen).resolved_web_dir == chosen
