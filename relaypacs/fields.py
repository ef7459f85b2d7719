"""Constrained field types for what clients send, shared by every domain's schemas and routers.

PostgreSQL refuses NUL in text (and the driver then raised a 500); no name, id, filter or free
text of this API has a use for NUL or other control characters, nor for integers past 64 bits
(a larger offset overflowed the database's BIGINT, another 500). Using these types instead of
bare `str` and `int` turns both into a 422 `invalid_request` naming the field, before any code
runs. tests/security/test_hostile_params.py sends such values to every parameter of every
endpoint, so a field that forgets them is found."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

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


def _pattern(pattern: str) -> Callable[[dict[str, Any]], None]:
    """Document `pattern` in the JSON schema, unless the field states a stricter one itself."""

    def document(schema: dict[str, Any]) -> None:
        schema.setdefault("pattern", pattern)

    return document


# A name, identifier, code or filter: one line, no control character. The pattern only
# documents the rule in the OpenAPI document (clients and fuzzers read it); single_line
# enforces it, with its own message.
LINE_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
LINE_DOC = Field(json_schema_extra=_pattern(LINE_PATTERN))
Line = Annotated[str, AfterValidator(single_line), LINE_DOC]
# With more constraints, they come first: pydantic enforces a constraint placed after the
# validator (`Annotated[Line, Field(max_length=64)]`) but leaves it out of the OpenAPI document,
# whose clients and fuzzers then send what is refused. Write
# `Annotated[str, StringConstraints(max_length=64), AfterValidator(single_line), LINE_DOC]`.


def _not_a_number(example: str) -> Callable[[object], object]:
    """Pydantic takes a number (or a text of digits) for a Unix time stamp; this API's dates and
    times are ISO 8601 texts only, as its document says: `-1167` is a mistake, not 1969."""

    def check(value: object) -> object:
        if isinstance(value, int | float) or (
            isinstance(value, str) and _NUMBER.fullmatch(value.strip())
        ):
            raise ValueError(f"{example} is expected (ISO 8601), not a number")
        return value

    return check


iso_8601 = _not_a_number("a date and time with its zone, e.g. 2026-12-06T10:00:00Z,")
iso_8601_day = _not_a_number("a day, e.g. 2026-12-06,")


_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?")
# A moment, with its zone, as ISO 8601 text.
Instant = Annotated[AwareDatetime, BeforeValidator(iso_8601)]
# A day, as ISO 8601 text.
Day = Annotated[dt.date, BeforeValidator(iso_8601_day)]
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def multi_line(value: str) -> str:
    if _CONTROL_BUT_LINES.search(value):
        raise ValueError("this text may not contain control characters but line breaks and tabs")
    if _SURROGATE.search(value):
        raise ValueError("this text must be valid Unicode text")
    return value


# Free text of several lines (a report's findings): line breaks and tabs, no other control.
PARAGRAPHS_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
PARAGRAPHS_DOC = Field(json_schema_extra=_pattern(PARAGRAPHS_PATTERN))
Paragraphs = Annotated[str, AfterValidator(multi_line), PARAGRAPHS_DOC]  # (constraints: as Line)
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
