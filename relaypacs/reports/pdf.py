"""A signed report as a PDF (fpdf2): patient and study identification, findings, impression, the
radiologist and signing time, the amendment history, the gateway's ids. Names in any script the
font covers render as written (DejaVu Sans: Latin, Greek, Cyrillic and more, embedded); a DICOM
person name's `^` separators become spaces. Pure: bytes in memory, no I/O but the font files."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos

FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
)


class FontMissing(RuntimeError):
    """No Unicode font: install the Debian package fonts-dejavu-core (scripts/bootstrap.sh)."""


def font_files() -> tuple[Path, Path]:
    """DejaVu Sans, regular and bold."""
    for directory in FONT_DIRS:
        regular, bold = directory / "DejaVuSans.ttf", directory / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    raise FontMissing("DejaVu Sans is not installed (Debian package fonts-dejavu-core)")


@dataclass(frozen=True)
class SignedVersion:
    version: int
    findings: str
    impression: str
    signed_by: str
    signed_at: dt.datetime
    reason: str | None


@dataclass(frozen=True)
class ReportDocument:
    report_id: str
    upload_id: str
    study_instance_uid: str
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    modality: str | None
    study_description: str | None
    accession_number: str | None
    versions: list[SignedVersion]  # oldest first; the last is the report


def person_name(value: str | None) -> str:
    """A DICOM PN (`Family^Given^Middle^Prefix^Suffix`, `=` between its representations) as a
    reader writes it."""
    if not value:
        return "-"
    groups = [" ".join(p for p in group.split("^") if p) for group in value.split("=")]
    return " = ".join(g for g in groups if g) or "-"


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(document: ReportDocument) -> bytes:
    regular, bold = font_files()
    latest = document.versions[-1]
    pdf = FPDF(format="A4")
    pdf.set_title("Radiology report")
    pdf.set_creator("RelayPACS Gateway")
    pdf.add_font("DejaVu", "", str(regular))
    pdf.add_font("DejaVu", "B", str(bold))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.epw

    def heading(text: str, size: float = 12) -> None:
        pdf.set_font("DejaVu", "B", size)
        pdf.multi_cell(width, 7, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def field(label: str, value: str | None) -> None:
        pdf.set_font("DejaVu", "B", 9)
        pdf.cell(45, 5.5, label)
        pdf.set_font("DejaVu", "", 9)
        pdf.multi_cell(width - 45, 5.5, value or "-", new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def paragraph(text: str) -> None:
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(width, 5.5, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(2)

    heading("Radiology report", 16)
    status = "amended" if latest.version > 1 else "final"
    pdf.set_font("DejaVu", "", 9)
    pdf.multi_cell(
        width,
        5,
        f"Version {latest.version} ({status}), signed by {latest.signed_by} on "
        f"{_stamp(latest.signed_at)}",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.ln(3)
    heading("Patient and study")
    field("Patient", person_name(document.patient_name))
    field("Patient ID", document.patient_id)
    field("Study date", document.study_date)
    field("Modality", document.modality)
    field("Description", document.study_description)
    field("Accession number", document.accession_number)
    field("Study Instance UID", document.study_instance_uid)
    pdf.ln(3)
    heading("Findings")
    paragraph(latest.findings)
    heading("Impression")
    paragraph(latest.impression)
    if len(document.versions) > 1:
        heading("Amendment history")
        for v in reversed(document.versions):
            why = f": {v.reason}" if v.reason else " (first signature)"
            pdf.set_font("DejaVu", "", 9)
            pdf.multi_cell(
                width,
                5,
                f"Version {v.version}, {v.signed_by}, {_stamp(v.signed_at)}{why}",
                new_x=XPos.LMARGIN,
                new_y=YPos.NEXT,
            )
        pdf.ln(2)
    pdf.ln(2)
    pdf.set_font("DejaVu", "", 8)
    pdf.multi_cell(
        width,
        4.5,
        f"Gateway study id {document.upload_id} - report id {document.report_id}",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    return bytes(pdf.output())
