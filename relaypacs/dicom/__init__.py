"""DICOM parsing and validation. Knows nothing of HTTP or the database."""

from relaypacs.dicom.validate import (
    DicomLimits,
    DicomRejected,
    DicomSummary,
    DicomValidator,
    inspect_file,
)

__all__ = [
    "DicomLimits",
    "DicomRejected",
    "DicomSummary",
    "DicomValidator",
    "inspect_file",
]
