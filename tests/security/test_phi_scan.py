"""The end-of-run search of the server logs (tests/phiscan.py) can fail a run: small pytest
sessions in a subprocess, one whose logs are clean and one whose logs leak in every way."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from relaypacs.devtools.synth import DEFAULT_PATIENT, FAKE_PATIENTS
from tests.gateway import subprocess_env
from tests.phiscan import contains_patient_data

LEAKS = """
import logging
from pathlib import Path

from relaypacs.devtools.synth import FAKE_PATIENTS
from tests.phiscan import record_server_output, register_server_log

DEFAULT, MARKED, DOE = FAKE_PATIENTS[0], FAKE_PATIENTS[1], FAKE_PATIENTS[2]


def test_a_name_part_in_lower_case_in_a_log_argument() -> None:
    logging.getLogger("relaypacs.uploads").debug(
        "upload of %s", DEFAULT.name.split("^")[1].lower()
    )


def test_a_name_in_an_exception_text() -> None:
    try:
        raise RuntimeError(f"cannot open {MARKED.name}.dcm")
    except RuntimeError:
        logging.getLogger("relaypacs.http").exception("unexpected error")


def test_an_iso_birth_date_in_a_gateway_log(tmp_path: Path) -> None:
    log = tmp_path / "gateway-1234.log"
    register_server_log(log)
    date = DOE.birth_date
    log.write_text(f"INFO relaypacs started\\nborn {date[:4]}-{date[4:6]}-{date[6:]}\\n")


def test_a_birth_date_in_captured_output() -> None:
    record_server_output("serve", f"patient born {DOE.birth_date}")


def test_a_server_log_removed_before_the_end(tmp_path: Path) -> None:
    log = tmp_path / "gateway-5678.log"
    register_server_log(log)
    log.write_text("INFO relaypacs started\\n")
    log.unlink()
"""

CLEAN = """
import logging
from pathlib import Path

from relaypacs.devtools.synth import FAKE_PATIENTS
from tests.phiscan import register_server_log

DATE = FAKE_PATIENTS[0].birth_date


def test_ids_and_words_that_only_look_alike(tmp_path: Path) -> None:
    log = tmp_path / "gateway-1234.log"
    register_server_log(log)
    log.write_text(
        f"GET /api/v1/uploads/{{upload_id}} study 2.25.{DATE}7 1.2.{DATE}.3 a{DATE}\\n"
        "the patient does not exist; Hongkong, wangle\\n"
    )
    logging.getLogger("relaypacs.forwarding").info("study 2.25.99%s01 delivered", DATE)
"""


def run_session(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.phiscan",
            "-p",
            "no:cacheprovider",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "--basetemp",
            str(tmp_path / "basetemp"),
            "test_inner.py",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_session_whose_server_logs_hold_patient_data_fails(tmp_path: Path) -> None:
    completed = run_session(tmp_path, LEAKS)
    output = completed.stdout + completed.stderr
    assert "5 passed" in output, output  # every test passed...
    assert completed.returncode == 1, output  # ...and the run fails
    assert "PATIENT DATA IN SERVER LOGS" in output
    lines = [line for line in output.splitlines() if ".log:" in line]
    python_log = [line for line in lines if "python-logging.log:" in line]
    assert any("a part of the name of fake patient #0" in line for line in python_log), output
    assert any("the whole name of fake patient #1" in line for line in python_log), output
    assert any(
        "gateway-1234.log:2: the birth date of fake patient #2 (YYYY-MM-DD)" in line
        for line in lines
    ), output
    assert any(
        "serve-" in line and "the birth date of fake patient #2 (YYYYMMDD)" in line
        for line in lines
    ), output
    assert any("gateway-5678.log:0: gone before the end of the run" in line for line in lines)
    # The report says where and which value, without the value.
    for patient in FAKE_PATIENTS[:3]:
        for part in (patient.name, *patient.name.split("^"), patient.birth_date):
            assert part.lower() not in output.lower()


def test_a_session_with_clean_server_logs_passes(tmp_path: Path) -> None:
    completed = run_session(tmp_path, CLEAN)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "patient data in server logs: none (2 server logs" in output


def test_every_form_of_a_name_and_a_birth_date_is_searched() -> None:
    surname, given = DEFAULT_PATIENT.name.split("^")
    date = DEFAULT_PATIENT.birth_date
    for hit in [
        DEFAULT_PATIENT.name,
        f"name={surname}",
        given.lower(),
        given.title(),
        f"{given} {surname}",
        f"born {date}.",
        f"{date[:4]}-{date[4:6]}-{date[6:]}",
        "Hong^Gildong=洪^吉洞=",
        "吉洞",
        "müller",
        "\u0418\u0432\u0430\u043d".upper(),
    ]:
        assert contains_patient_data(hit), hit
    for miss in [f"2.25.{date}1", f"1.{date}.2", f"x{date}", f"{surname}ISH", "does", "Jo"]:
        assert not contains_patient_data(miss), miss
