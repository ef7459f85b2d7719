"""No patient name or birth date of the test data in the server logs of the whole test run.

A pytest plugin (loaded by ``tests/conftest.py``) that collects what the servers of the run
wrote, and fails the run at its end when any of it holds a name or a birth date of
:data:`relaypacs.devtools.synth.FAKE_PATIENTS` (every patient of the test data is one of
them, which ``tests/devtools/test_fake_patients.py`` checks):

- every ``relaypacs serve`` process the tests start writes its stdout and stderr to a file
  that is registered here (:func:`register_server_log`, called by ``tests/gateway.py`` and
  the other places that start one); output captured in memory is saved with
  :func:`record_server_output`;
- the in-process apps (``create_app`` behind httpx's ASGITransport, the forwarding worker,
  the CLI client run with CliRunner) log through Python logging: a handler on the root
  logger writes every record of the session, formatted with its arguments and its
  exception text, to ``<basetemp>/server-logs/python-logging.log``.

Levels of the in-process logging: what a real server configured with
``RELAYPACS_LOG_LEVEL=debug`` (the most it may log) would write. ``relaypacs`` and every
other logger at DEBUG, but the libraries that ``relaypacs serve`` always holds at WARNING
(``relaypacs.cli.main.DATA_LOGGERS``: httpx, SQLAlchemy's engine, asyncpg, botocore, pydicom,
redis...) held at WARNING here too, exactly as the server does. The root logger is set to
DEBUG only for the session, so pytest's own capture of each test's records (caplog, the
"captured log" of a failure) also has the DEBUG and INFO records that the default WARNING
held back. Test doubles that run in the test process (the fake PACS, the CLI's fake
gateway) log into the same file: stricter than needed, and none of them logs patient data.

At the end (``pytest_sessionfinish``) each file is searched for every name (whole, and each
part between ``^``, ``=`` and spaces, in any case; an ASCII part as a whole word, and only
from 3 letters) and every birth date (``YYYYMMDD`` and
``YYYY-MM-DD``, not inside a longer number or a dotted UID). A hit sets the exit status to 1
and the terminal summary says the file, the line and which value, never the line itself.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaypacs.devtools.synth import FAKE_PATIENTS, FakePatient

__all__ = [
    "Finding",
    "Needle",
    "contains_patient_data",
    "needles",
    "record_server_output",
    "register_server_log",
    "scan_file",
]

_server_logs: list[Path] = []
_state: dict[str, Path] = {}
_findings: list[str] = []
_timing: dict[str, float] = {}

PYTHON_LOG = "python-logging.log"


def register_server_log(path: Path) -> None:
    """``path`` holds (or will hold) a server's output: search it at the end of the run."""
    resolved = path.resolve()
    if resolved not in _server_logs:
        _server_logs.append(resolved)


def record_server_output(label: str, output: str) -> None:
    """A server's output that a test captured in memory: saved to the run's log folder (when
    the session's capture is on) and searched at the end of the run."""
    folder = _state.get("folder")
    if folder is None:
        return
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:60]
    path = folder / f"{safe}-{time.monotonic_ns()}.log"
    path.write_text(output, encoding="utf-8", errors="replace")
    register_server_log(path)


# --------------------------------------------------------------------------------------
# What to look for
# --------------------------------------------------------------------------------------


def _name_parts(name: str) -> set[str]:
    parts = {part for part in re.split(r"[\^= ]+", name) if part}
    return {p for p in parts if not p.isascii() or len(p) >= 3}


def _word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


@dataclass(frozen=True)
class Needle:
    """A value to look for in lower-cased text, and what may not touch it on either side."""

    value: str  # lower case
    label: str  # what it stands for, never the value itself
    before: str = ""  # characters (besides letters, digits, "_") that may not precede it
    after: str = ""  # ... that may not follow it when a digit follows them
    word: bool = False  # a whole word only

    def hits(self, text: str) -> Iterator[int]:
        """The offsets of the value in ``text`` (lower case)."""
        start = text.find(self.value)
        while start != -1:
            if not self.word or self._alone(text, start):
                yield start
            start = text.find(self.value, start + 1)

    def _alone(self, text: str, start: int) -> bool:
        before = text[start - 1] if start else " "
        if _word_char(before) or before in self.before:
            return False
        end = start + len(self.value)
        after = text[end : end + 1]
        if after and _word_char(after):
            return False
        return not (after and after in self.after and text[end + 1 : end + 2].isdigit())


def needles(patients: tuple[FakePatient, ...] = FAKE_PATIENTS) -> list[Needle]:
    found: list[Needle] = []
    for index, patient in enumerate(patients):
        who = f"fake patient #{index}"
        found.append(Needle(patient.name.lower(), f"the whole name of {who}"))
        for part in sorted(_name_parts(patient.name)):
            # An ASCII part as a word, not a piece of a longer one ("DOE" is not in "does").
            label = f"a part of the name of {who}"
            found.append(Needle(part.lower(), label, word=part.isascii()))
        date = patient.birth_date
        iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        # Not inside a longer number, a dotted UID or a hex id.
        found.append(Needle(date, f"the birth date of {who} (YYYYMMDD)", ".", ".", word=True))
        found.append(Needle(iso, f"the birth date of {who} (YYYY-MM-DD)", ".-", "-", word=True))
    return found


def contains_patient_data(text: str) -> bool:
    lowered = text.lower()
    return any(next(needle.hits(lowered), None) is not None for needle in needles())


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def scan_file(path: Path, looked_for: list[Needle] | None = None) -> list[Finding]:
    """Where the file holds a fake patient's name or birth date (a plain ``str.find`` for
    each value over the whole lower-cased file: some hundred MB a second)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace").lower()
    except FileNotFoundError:
        return []
    findings = []
    for needle in looked_for or needles():
        for offset in needle.hits(text):
            findings.append(Finding(path, text.count("\n", 0, offset) + 1, needle.label))
    return sorted(findings, key=lambda f: f.line)


# --------------------------------------------------------------------------------------
# The session: capture, then search
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _capture_server_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The run's log folder, and every Python log record of the session written to it."""
    from relaypacs.cli.main import DATA_LOGGERS

    folder = tmp_path_factory.mktemp("server-logs", numbered=False)
    _state["folder"] = folder
    path = folder / PYTHON_LOG
    handler = logging.FileHandler(path, encoding="utf-8", delay=False)
    handler.setLevel(logging.DEBUG)
    # The message with its arguments, then the exception and stack text when there is one.
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    held = {name: logging.getLogger(name).level for name in DATA_LOGGERS}
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in DATA_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    register_server_log(path)
    try:
        yield folder
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(before)
        for name, level in held.items():
            logging.getLogger(name).setLevel(level)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _server_logs:
        return
    began = time.perf_counter()
    looked_for = needles()
    findings = [f for path in _server_logs for f in scan_file(path, looked_for)]
    # A log that is gone was not searched: that is no proof of a clean run.
    findings += [
        Finding(p, 0, "gone before the end of the run") for p in _server_logs if not p.exists()
    ]
    _timing["seconds"] = time.perf_counter() - began
    _timing["bytes"] = sum(p.stat().st_size for p in _server_logs if p.exists())
    _timing["files"] = len(_server_logs)
    if findings:
        _findings.extend(str(f) for f in findings)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _timing:
        return
    summary = (
        f"{int(_timing['files'])} server logs ({_timing['bytes'] / 1e6:.1f} MB) searched for "
        f"the {len(FAKE_PATIENTS)} fake patients' names and birth dates in "
        f"{_timing['seconds']:.2f} s"
    )
    if not _findings:
        terminalreporter.write_line(f"patient data in server logs: none ({summary})")
        return
    terminalreporter.write_sep("=", "PATIENT DATA IN SERVER LOGS", red=True, bold=True)
    terminalreporter.write_line(summary)
    for finding in _findings[:200]:
        terminalreporter.write_line(finding)
    if len(_findings) > 200:
        terminalreporter.write_line(f"... and {len(_findings) - 200} more")
    terminalreporter.write_line(
        "The run fails: a server logged a patient's name or birth date (tests/phiscan.py)."
    )
