"""Report documents as DICOM: the Encapsulated PDF the write-back builds, and what the report
sync reads from a PACS's SR or Encapsulated PDF."""

from __future__ import annotations

import datetime as dt
import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from relaypacs.devtools.synth import FAKE_PATIENTS
from relaypacs.dicom.documents import (
    ENCAPSULATED_PDF,
    PdfInstance,
    UnreadableReport,
    build_encapsulated_pdf,
    pdf_of,
    read_dataset,
    sr_text,
    study_attributes,
)

PATIENT = FAKE_PATIENTS[-1]  # a name with an ideographic group
GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _instance(study_uid: str) -> PdfInstance:
    return PdfInstance(
        study_instance_uid=study_uid,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=9900,
        instance_number=2,
        title="Report, version 2",
        created_at=dt.datetime(2026, 12, 6, 20, 0, tzinfo=dt.UTC),
    )


class TestEncapsulatedPdf:
    @pytest.mark.parametrize("pdf", [b"%PDF-1.4 even\n", b"%PDF-1.4 odd\n\n"])
    def test_the_pdf_is_kept_as_is_in_the_study_with_its_patient(self, pdf: bytes) -> None:
        study_uid = generate_uid()
        instance = _instance(study_uid)
        study = study_attributes(
            {
                "00100010": {
                    "vr": "PN",
                    "Value": [dict(zip(GROUPS, PATIENT.name.split("="), strict=False))],
                },
                "00100020": {"vr": "LO", "Value": [PATIENT.patient_id]},
                "00100030": {"vr": "DA", "Value": [PATIENT.birth_date]},
                "00080050": {"vr": "SH", "Value": ["ACC42"]},
            }
        )
        data = build_encapsulated_pdf(pdf, instance, study)
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ENCAPSULATED_PDF
        assert ds.SOPClassUID == ENCAPSULATED_PDF
        assert ds.SOPInstanceUID == instance.sop_instance_uid
        assert ds.StudyInstanceUID == study_uid
        assert ds.SeriesInstanceUID == instance.series_instance_uid
        assert ds.Modality == "DOC"
        assert str(ds.PatientName) == PATIENT.name.rstrip("=")  # every group, any script
        assert ds.PatientID == PATIENT.patient_id
        assert ds.PatientBirthDate == PATIENT.birth_date
        assert ds.AccessionNumber == "ACC42"
        assert ds.PatientSex == ""  # type 2: present, empty when unknown
        assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
        assert pdf_of(ds) == pdf  # the padding byte of an odd length is not the PDF's


def _code(meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X", "99TEST", meaning
    return code


def _item(kind: str, meaning: str, **values: object) -> Dataset:
    item = Dataset()
    item.ValueType = kind
    item.ConceptNameCodeSequence = [_code(meaning)]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


class TestStructuredReportText:
    def test_the_content_tree_is_walked_and_the_impression_kept_apart(self) -> None:
        size = Dataset()
        size.NumericValue = "12"
        size.MeasurementUnitsCodeSequence = [_code("millimeter")]
        size.MeasurementUnitsCodeSequence[0].CodeValue = "mm"
        findings = _item(
            "CONTAINER",
            "Findings",
            ContentSequence=[
                _item("TEXT", "Finding", TextValue="Nodule in the right upper lobe."),
                _item("NUM", "Diameter", MeasuredValueSequence=[size]),
                _item("CODE", "Laterality", ConceptCodeSequence=[_code("Right")]),
            ],
        )
        impression = _item(
            "CONTAINER",
            "Impression",
            ContentSequence=[_item("TEXT", "Summary", TextValue="Follow-up CT in 3 months.")],
        )
        root = _item("CONTAINER", "Chest CT report", ContentSequence=[findings, impression])
        text = sr_text(root)
        assert text.findings.splitlines() == [
            "Nodule in the right upper lobe.",
            "Diameter: 12 mm",
            "Laterality: Right",
        ]
        assert text.impression == "Follow-up CT in 3 months."

    def test_an_sr_with_headings_only_has_no_text(self) -> None:
        root = _item(
            "CONTAINER",
            "Report",
            ContentSequence=[_item("CONTAINER", "Findings", ContentSequence=[])],
        )
        with pytest.raises(UnreadableReport) as caught:
            sr_text(root)
        assert caught.value.reason == "sr_without_text"


class TestUnusable:
    def test_a_pdf_of_no_bytes(self) -> None:
        data = build_encapsulated_pdf(b"", _instance(generate_uid()), {})
        with pytest.raises(UnreadableReport) as caught:
            pdf_of(read_dataset(data))
        assert caught.value.reason == "empty_pdf"

    def test_a_document_that_is_not_a_pdf(self) -> None:
        data = build_encapsulated_pdf(b"<html></html>", _instance(generate_uid()), {})
        with pytest.raises(UnreadableReport) as caught:
            pdf_of(read_dataset(data))
        assert caught.value.reason == "not_a_pdf"

    def test_bytes_that_are_not_dicom(self) -> None:
        with pytest.raises(UnreadableReport) as caught:
            read_dataset(b"\x00" * 10)
        assert caught.value.reason == "not_dicom"
