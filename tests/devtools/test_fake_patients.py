"""Every patient name and birth date that the tests and the benchmark write into test data is
one of FAKE_PATIENTS: the end-of-run search of the server logs (tests/phiscan.py) knows them
all."""

from __future__ import annotations

import ast
from pathlib import Path

from relaypacs.devtools.synth import FAKE_PATIENTS

REPO = Path(__file__).resolve().parents[2]
NAME_KEYS = {"patient_name", "PatientName"}
DATE_KEYS = {"birth_date", "PatientBirthDate"}
# Not a name in the data that reaches a server: bytes replaced by undecodable ones
# (tests/cli/test_dicomheader.py, test_bytes_that_do_not_decode).
PLACEHOLDERS = {"ABCD"}


def literals(tree: ast.AST) -> list[tuple[str, int, str]]:
    """(kind, line, value) of every string literal given to a patient name or birth date:
    a keyword argument, a dict entry or an attribute assignment."""
    found: list[tuple[str, int, str]] = []

    def add(key: str, value: ast.AST) -> None:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            if key in NAME_KEYS:
                found.append(("name", value.lineno, value.value))
            elif key in DATE_KEYS:
                found.append(("birth date", value.lineno, value.value))

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg:
            add(node.arg, node.value)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    add(key.value, value)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute):
                    add(target.attr, node.value)
    return found


def test_the_tests_use_no_patient_outside_the_registry() -> None:
    names = {p.name for p in FAKE_PATIENTS}
    dates = {p.birth_date for p in FAKE_PATIENTS}
    strangers = []
    sources = [*sorted((REPO / "tests").rglob("*.py")), *sorted((REPO / "bench").rglob("*.py"))]
    seen = 0
    for path in sources:
        for kind, line, value in literals(ast.parse(path.read_text(encoding="utf-8"))):
            seen += 1
            known = names if kind == "name" else dates
            if value and value not in known and value not in PLACEHOLDERS:
                strangers.append(f"{path.relative_to(REPO)}:{line}: {kind} {value!r}")
    assert seen >= 10  # the search finds the tests' patients
    assert strangers == [], "add them to relaypacs.devtools.synth.FAKE_PATIENTS"


def test_no_test_looks_for_the_former_default_patient() -> None:
    """The default patient was TEST^PATIENT, born 19700101: no data has them any more, so an
    assertion that they are not somewhere would pass whatever the gateway does."""
    former = ("TEST^PATIENT", "19700101", "1970-01-01")
    found = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in [*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]
        if path.name != "test_fake_patients.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and any(value in node.value for value in former)
    ]
    assert found == [], "use relaypacs.devtools.synth.DEFAULT_PATIENT"


def test_the_registry_names_are_distinct_from_log_words() -> None:
    for patient in FAKE_PATIENTS:
        assert len(patient.birth_date) == 8
        assert patient.birth_date.isdigit()
        assert not patient.birth_date.startswith(("1970", "20"))  # no epoch, no log timestamp
