"""Fixtures of the DICOM tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write(tmp_path: Path) -> Callable[[bytes], Path]:
    counter = iter(range(1_000_000))

    def _write(data: bytes) -> Path:
        path = tmp_path / f"f{next(counter)}"
        path.write_bytes(data)
        return path

    return _write
