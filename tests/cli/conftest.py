"""Fixtures of the upload CLI tests: a real gateway subprocess and a user on it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway import create_user, run_gateway

# The smallest chunk the gateway accepts: many chunks per file, so that a run can be
# killed half-way through a study.
CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class Gateway:
    base_url: str
    username: str
    password: str
    data_dir: Path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``relaypacs serve`` on a free port with its own data dir, and a clinician account."""
    root = tmp_path_factory.mktemp("gateway")
    data_dir = root / "data"
    env = {"RELAYPACS_CHUNK_SIZE": str(CHUNK_SIZE)}
    with run_gateway(data_dir, env) as base_url:
        username, password = "clinician1", secrets.token_urlsafe(16)
        create_user(data_dir, username, password, env=env)
        yield Gateway(base_url, username, password, data_dir)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
