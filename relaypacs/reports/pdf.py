"""A signed report as a PDF (fpdf2): patient and study identification, findings, impression, the
radiologist and signing time, the amendment history, the gateway's ids. Names in any script the
font covers render as written (DejaVu Sans: Latin, Greek, Cyrillic and more; Droid Sans
Fallback for Chinese and Japanese, Nanum Gothic for Korean; all embedded, subset); a DICOM
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


# What DejaVu Sans lacks: Chinese and Japanese from Droid Sans Fallback, the font Android
# shipped for them (Debian package fonts-droid-fallback, 7 MB), Korean from Nanum Gothic
# (fonts-nanum, 33 MB); Noto CJK, which has all three, is 90 MB.
FALLBACK_FONTS = (
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
    Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf"),
)


class FontMissing(RuntimeError):
    """A font is missing: install the Debian packages fonts-dejavu-core, fonts-droid-fallback
    and fonts-nanum (scripts/bootstrap.sh does)."""


def font_files() -> tuple[Path, Path, tuple[Path, ...]]:
    """DejaVu Sans, regular and bold, and the fallbacks for the scripts it lacks."""
    missing = [path for path in FALLBACK_FONTS if not path.is_file()]
    if missing:
        raise FontMissing(f"{missing[0].name} is not installed (fonts-droid-fallback, fonts-nanum)")
    for directory in FONT_DIRS:
        regular, bold = directory / "DejaVuSans.ttf", directory / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold, FALLBACK_FONTS
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
    regular, bold, fallbacks = font_files()
    latest = document.versions[-1]
    pdf = FPDF(format="A4")
    pdf.set_title("Radiology report")
    pdf.set_creator("RelayPACS Gateway")
    pdf.add_font("DejaVu", "", str(regular))
    pdf.add_font("DejaVu", "B", str(bold))
    for number, path in enumerate(fallbacks):
        pdf.add_font(f"Fallback{number}", "", str(path))
    # A character DejaVu lacks (a name in Chinese, Japanese or Korean) is drawn with the first
    # fallback that has it, bold text included (they have no bold face).
    pdf.set_fallback_fonts([f"Fallback{n}" for n in range(len(fallbacks))], exact_match=False)
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
