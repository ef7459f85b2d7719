"""`python -m bench.document` runs each command and keeps its output, its exit status and, when
it failed, the end of its standard error, in one Markdown document."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import document
from bench.document import Entry


@pytest.fixture
def entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        document,
        "ENTRIES",
        (
            Entry("fine", "A command that prints a table", ("calendar", "2026", "12")),
            Entry(
                "broken",
                "A command that fails",
                ("bench.no_such_module",),
                about="It does not exist.",
            ),
        ),
    )


@pytest.mark.usefixtures("entries")
def test_the_document_holds_each_output_and_each_failure(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    assert document.main(["--out", str(out)]) == 1  # one command failed
    text = out.read_text()
    assert "## Machine" in text
    assert "cores:" in text
    assert "| `python -m calendar 2026 12` | 0 |" in text
    assert "December 2026" in text
    assert "Mo Tu We Th Fr Sa Su" in text
    assert "## A command that fails" in text
    assert "It does not exist." in text
    assert "exit status 1" in text
    assert "No module named bench.no_such_module" in text


@pytest.mark.usefixtures("entries")
def test_only_runs_the_sections_named(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    assert document.main(["--only", "broken", "--out", str(out)]) == 1
    text = out.read_text()
    assert "A command that fails" in text
    assert "A command that prints a table" not in text
    with pytest.raises(SystemExit):
        document.main(["--only", "nothing", "--out", str(out)])


def test_full_keeps_the_named_sections_in_their_full_form_under_quick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        document,
        "ENTRIES",
        (
            Entry("year", "A year", ("calendar", "2026"), ("calendar", "2026", "1")),
            Entry("month", "A month", ("calendar", "2026"), ("calendar", "2026", "12")),
        ),
    )
    out = tmp_path / "benchmarks.md"
    assert document.main(["--quick", "--full", "year", "--out", str(out)]) == 0
    text = out.read_text()
    assert "`uv run python -m bench.document --quick --full year`" in text
    assert "| `python -m calendar 2026` | 0 |" in text  # year: its full form
    assert "| `python -m calendar 2026 12` | 0 |" in text  # month: its short form
    assert "| `python -m calendar 2026 1` |" not in text
    with pytest.raises(SystemExit):  # --full means nothing without --quick
        document.main(["--full", "year", "--out", str(out)])
    with pytest.raises(SystemExit):
        document.main(["--quick", "--full", "nothing", "--out", str(out)])


def test_update_replaces_the_sections_named_and_keeps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def entries(month: str) -> tuple[Entry, ...]:
        return (
            Entry("year", "A year", ("calendar", "2026")),
            Entry("month", "A month", ("calendar", "2026", month)),
            Entry("later", "Later", ("calendar", "2027", "1")),
        )

    out = tmp_path / "benchmarks.md"
    monkeypatch.setattr(document, "ENTRIES", entries("11"))
    assert document.main(["--out", str(out)]) == 0
    before = out.read_text()
    year = before[before.index('<a id="year">') : before.index('<a id="month">')]
    later = before[before.index('<a id="later">') :]
    assert "November 2026" in before

    monkeypatch.setattr(document, "ENTRIES", entries("12"))
    assert document.main(["--only", "month", "--update", "--out", str(out)]) == 0
    after = out.read_text()
    assert "December 2026" in after
    assert "November 2026" not in after
    assert year in after  # kept as it was, byte for byte
    assert later.rstrip("\n") in after
    assert (
        after.index('<a id="year">') < after.index('<a id="month">') < after.index('<a id="later">')
    )
    assert "| `python -m calendar 2026 12` | 0 |" in after  # its row of the table
    assert "| `python -m calendar 2026 11` |" not in after
    assert "`uv run python -m bench.document --only month --update`" in after
    assert "Regenerated alone (load average at start:" in after
    with pytest.raises(SystemExit):  # every section: that is a whole new document
        document.main(["--update", "--out", str(out)])
    with pytest.raises(SystemExit):  # nothing to update
        document.main(["--only", "month", "--update", "--out", str(tmp_path / "none.md")])
