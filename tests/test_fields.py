"""The constrained field types every domain's schemas use (relaypacs/fields.py)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from pydantic import BaseModel, ValidationError

from relaypacs.fields import LINE_PATTERN, Day, Instant, Line


class Query(BaseModel):
    name: Line | None = None
    since: Instant | None = None
    day: Day | None = None


@pytest.mark.parametrize("value", ["-1167", "0", "1700000000", "1e5", " 12.5 "])
def test_a_number_is_not_a_moment(value: str) -> None:
    """Pydantic alone reads these as Unix time stamps (-1167: 1969); the API refuses them."""
    with pytest.raises(ValidationError, match="ISO 8601"):
        Query(since=value)
    with pytest.raises(ValidationError, match="ISO 8601"):
        Query.model_validate({"since": 1700000000})
    with pytest.raises(ValidationError, match=r"a day, e\.g\. 2026-12-06"):
        Query(day=value)


def test_an_iso_8601_day_is_taken() -> None:
    assert Query(day="2026-12-06").day == dt.date(2026, 12, 6)


def test_an_iso_8601_moment_with_its_zone_is_taken() -> None:
    assert Query(since="2026-12-06T10:00:00+01:00").since == dt.datetime(
        2026, 12, 6, 9, tzinfo=dt.UTC
    )
    with pytest.raises(ValidationError, match="timezone"):
        Query(since="2026-12-06T10:00:00")


def test_the_documented_pattern_is_the_rule_enforced() -> None:
    """The OpenAPI document's pattern of a Line says exactly what single_line takes."""
    schema = Query.model_json_schema()["properties"]["name"]["anyOf"][0]
    assert schema["pattern"] == LINE_PATTERN
    for text in ["abc", "İ ﬃ é", "a b", "x" * 300]:
        assert re.fullmatch(LINE_PATTERN, text)
        assert Query(name=text).name == text
    for text in ["a\x00b", "a\nb", "\x1b[31m", "a\x85b", "\x7f"]:
        assert not re.fullmatch(LINE_PATTERN, text)
        with pytest.raises(ValidationError, match="control characters"):
            Query(name=text)
