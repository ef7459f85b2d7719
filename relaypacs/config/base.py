"""What every area of the settings shares: the prefix and sources (environment, then the TOML
file), the data directory, and the parsing of a list from the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "RELAYPACS_CONFIG_FILE"


# A list from the environment as comma-separated values (or a JSON list), or a TOML array.
CommaList = Annotated[list[str], NoDecode]


def split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class SettingsBase(BaseSettings):
    """The base of each area of the settings (relaypacs.config.Settings has them all).

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
