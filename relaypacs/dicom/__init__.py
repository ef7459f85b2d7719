"""DICOM parsing and validation. Knows nothing of HTTP or the database."""

from relaypacs.dicom.inspect import DicomLimits, DicomRejected, DicomSummary, inspect_file
from relaypacs.dicom.pool import DicomValidator

__all__ = [
    "DicomLimits",
    "DicomRejected",
    "DicomSummary",
    "DicomValidator",
    "inspect_file",
]
