"""One settings object for the gateway: environment (RELAYPACS_*) and an optional TOML file.

`Settings` has every area's settings, each written (with its validation) in a module of its
own: `server` (listening, data, database, storage, Redis, web app, HTTP surface), `security`
(signing keys, sessions, TOTP, rate limits), `uploads` (chunks, manifests, DICOM validation),
`operations` (logs, metrics, error reports, health, scheduled jobs), `pacs` (PACS targets and
forwarding; a target's own settings are `pacs_target.PacsTarget`) and `reports` (reports,
events, email). `base` has what they share."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from relaypacs.config.base import CONFIG_FILE_ENV
from relaypacs.config.operations import OperationsSettings
from relaypacs.config.pacs import PacsSettings
from relaypacs.config.pacs_target import MiB, PacsTarget
from relaypacs.config.reports import ReportSettings
from relaypacs.config.security import SecuritySettings
from relaypacs.config.server import ServerSettings
from relaypacs.config.uploads import UploadSettings

__all__ = ["CONFIG_FILE_ENV", "ConfigError", "MiB", "PacsTarget", "Settings", "load_settings"]


class ConfigError(Exception):
    """The configuration is invalid; the message lists every bad value, one per line."""


# The areas in reverse order: pydantic orders the fields from the last base to the first, so
# the server's come first (and so do their lines in load_settings's errors).
class Settings(
    ReportSettings,
    PacsSettings,
    OperationsSettings,
    UploadSettings,
    SecuritySettings,
    ServerSettings,
):
    """Gateway configuration.

    Every field can be set as an environment variable `RELAYPACS_<FIELD>` (upper case) or in the
    TOML file named by `RELAYPACS_CONFIG_FILE`; the environment wins over the file.
    """


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
