"""Constrained field types for what clients send, shared by every domain's schemas and routers.

PostgreSQL refuses NUL in text (and the driver then raised a 500); no name, id, filter or free
text of this API has a use for NUL or other control characters, nor for integers past 64 bits
(a larger offset overflowed the database's BIGINT, another 500). Using these types instead of
bare `str` and `int` turns both into a 422 `invalid_request` naming the field, before any code
runs. tests/security/test_hostile_params.py sends such values to every parameter of every
endpoint, so a field that forgets them is found."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field

# C0 controls, DEL, C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

MAX_OFFSET = 1_000_000_000  # far past any real list, far below BIGINT
MAX_ID = 2**63 - 1  # BIGINT


def single_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("this text may not contain control characters (NUL included)")
    if _SURROGATE.search(value):
        raise ValueError("this text must be valid Unicode text")
    return value


# A name, identifier, code or filter: one line, no control character.
Line = Annotated[str, AfterValidator(single_line)]
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def multi_line(value: str) -> str:
    if _CONTROL_BUT_LINES.search(value):
        raise ValueError("this text may not contain control characters but line breaks and tabs")
    if _SURROGATE.search(value):
        raise ValueError("this text must be valid Unicode text")
    return value


# Free text of several lines (a report's findings): line breaks and tabs, no other control.
Paragraphs = Annotated[str, AfterValidator(multi_line)]
# An offset into a list.
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET)]
# A database row id (BIGINT).
RowId = Annotated[int, Field(ge=0, le=MAX_ID)]


def name_key(name: str) -> str:
    """The identity of a name for uniqueness and look-up: compatibility-normalised and case-folded
    (NFKC, casefold, NFKC again: Unicode's NFKC_Casefold), so `ADMIN`, `admin`, `Admin` and the
    same letters in full width (U+FF41...) are one name, as a person reading them would take
    them."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
