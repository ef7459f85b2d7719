"""Report documents as DICOM instances: an Encapsulated PDF built for the PACS (a report signed
in the gateway, written back into its study), and the report a PACS holds read back (the text
of a Structured Report, walking its content tree; the PDF of an Encapsulated PDF, as is).

Knows nothing of the database or the PACS. Patient data in here is never logged.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SR_CLASSES = frozenset({BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR})
REPORT_CLASSES = SR_CLASSES | {ENCAPSULATED_PDF}

# The patient and study modules' attributes copied from the study as the PACS holds it
# (DICOM JSON keywords by tag), so that the report sits in the same study of the same patient.
STUDY_TAGS: Mapping[str, str] = {
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00100030": "PatientBirthDate",
    "00100040": "PatientSex",
    "00080020": "StudyDate",
    "00080030": "StudyTime",
    "00080050": "AccessionNumber",
    "00080090": "ReferringPhysicianName",
    "00200010": "StudyID",
    "00081030": "StudyDescription",
}
# Type 2 attributes of the Patient and General Study modules: present, empty when unknown.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)


@dataclass(frozen=True)
class PdfInstance:
    """What identifies a report's Encapsulated PDF instance in its study."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int
    title: str  # the document's title (no patient data)
    created_at: dt.datetime


def study_attributes(dicom_json: Mapping[str, Any]) -> dict[str, Any]:
    """The patient and study modules' values from a QIDO-RS study (DICOM JSON), by keyword."""
    found: dict[str, Any] = {}
    for tag, keyword in STUDY_TAGS.items():
        element = dicom_json.get(tag)
        if not isinstance(element, Mapping):
            continue
        values = element.get("Value") or []
        if not values:
            continue
        value = values[0]
        if isinstance(value, Mapping):  # a person name: its groups, as DICOM writes them
            groups = [str(value.get(g) or "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            value = "=".join(groups).rstrip("=")
        if isinstance(value, str | int | float):
            found[keyword] = str(value)
    return found


def build_encapsulated_pdf(pdf: bytes, instance: PdfInstance, study: Mapping[str, Any]) -> bytes:
    """An Encapsulated PDF Storage instance (Part 10 file, explicit VR little endian, UTF-8
    text) holding `pdf` as is, in the study, with the study's patient and study attributes
    (`study`, by keyword: see study_attributes), Modality DOC."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    meta.MediaStorageSOPInstanceUID = UID(instance.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = instance.sop_instance_uid
    for keyword in _TYPE_2:
        setattr(ds, keyword, "")
    for keyword in STUDY_TAGS.values():
        if study.get(keyword):
            setattr(ds, keyword, study[keyword])
    ds.StudyInstanceUID = instance.study_instance_uid
    ds.SeriesInstanceUID = instance.series_instance_uid
    ds.Modality = "DOC"
    ds.SeriesNumber = instance.series_number
    ds.SeriesDescription = "Report"
    ds.Manufacturer = "RelayPACS"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = instance.instance_number
    when = instance.created_at.astimezone(dt.UTC)
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = instance.title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


class UnreadableReport(Exception):
    """A report instance the gateway cannot use; `reason` is a short code (no patient data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ReportText:
    findings: str
    impression: str


def read_dataset(data: bytes) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        sop_class = ds.get("SOPClassUID")
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError) as exc:
        raise UnreadableReport("not_dicom") from exc
    if not sop_class:
        raise UnreadableReport("not_dicom")
    return ds


def pdf_of(ds: Dataset) -> bytes:
    """The PDF an Encapsulated PDF instance holds, as is (its padding byte cut off by the
    Encapsulated Document Length where the instance gives it)."""
    if str(ds.get("MIMETypeOfEncapsulatedDocument", "application/pdf")) != "application/pdf":
        raise UnreadableReport("not_a_pdf")
    data = bytes(ds.get("EncapsulatedDocument") or b"")
    length = ds.get("EncapsulatedDocumentLength")
    if isinstance(length, int) and 0 <= length <= len(data):
        data = data[:length]
    if not data:
        raise UnreadableReport("empty_pdf")
    if not data.startswith(b"%PDF"):
        raise UnreadableReport("not_a_pdf")
    return data


_IMPRESSION_WORDS = ("impression", "conclusion", "summary")


def _meaning(item: Dataset) -> str:
    codes = item.get("ConceptNameCodeSequence") or []
    return str(codes[0].get("CodeMeaning", "")).strip() if codes else ""


def _value(item: Dataset) -> str:
    kind = str(item.get("ValueType", "")).upper()
    if kind == "TEXT":
        return str(item.get("TextValue", "")).strip()
    if kind == "CODE":
        codes = item.get("ConceptCodeSequence") or []
        return str(codes[0].get("CodeMeaning", "")).strip() if codes else ""
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence") or []
        if not measured:
            return ""
        number = str(measured[0].get("NumericValue", "")).strip()
        units = measured[0].get("MeasurementUnitsCodeSequence") or []
        unit = str(units[0].get("CodeValue", "")).strip() if units else ""
        return f"{number} {unit}".strip()
    return ""


def _walk(items: Any, under_impression: bool) -> Iterator[tuple[bool, str]]:
    """(is it the impression, "Concept: value") for every item with a value, depth first."""
    for item in items or []:
        meaning = _meaning(item)
        impression = under_impression or any(w in meaning.lower() for w in _IMPRESSION_WORDS)
        value = _value(item)
        if value:
            heading = meaning if meaning and meaning.lower() not in ("finding", "findings") else ""
            yield impression, f"{heading}: {value}" if heading and not impression else value
        yield from _walk(item.get("ContentSequence"), impression)


def sr_text(ds: Dataset) -> ReportText:
    """A Structured Report's text, walking its content tree: what sits under a concept named
    impression or conclusion is the impression, the rest the findings."""
    findings: list[str] = []
    impression: list[str] = []
    for is_impression, line in _walk(ds.get("ContentSequence"), False):
        (impression if is_impression else findings).append(line)
    text = ReportText("\n".join(findings), "\n".join(impression))
    if not text.findings and not text.impression:
        raise UnreadableReport("sr_without_text")
    return text
