"""The report domain's objects in object storage, all under `reports/<report id>/`: their
keys.

- `v<n>.pdf`: the PDF of version n made by the gateway (GET /reports/{id}/pdf, the write-back);
  named by the version's row, made again from it when missing.
- `v<n>-pacs-<random>.pdf`: the PDF the PACS gave for version n (reports/sync.py), named by
  `report.pdf_key`; kept when the report is amended (the old keys were kept the same way).
- `v<n>-<SOP Instance UID>.dcm`: the Encapsulated PDF instance written back for version n
  (reports/writeback.py), named by its `report_pacs_copy` row.

The last two get a key of their own per build and are stored before the transaction that
records them (no transaction waits for object storage): a build that is cancelled, fails, or
loses a race between the two leaves an object that no row names, and never overwrites the
object another build recorded.
"""

from __future__ import annotations

import uuid

from relaypacs.reports.models import Report


def pdf_key(report: Report) -> str:
    """The object of the report's latest signed version (each version has its own)."""
    return version_pdf_key(report.id, report.version)


def version_pdf_key(report_id: uuid.UUID, version: int) -> str:
    return f"reports/{report_id}/v{version}.pdf"


def _pacs_pdf_prefix(report_id: uuid.UUID, version: int) -> str:
    return f"reports/{report_id}/v{version}-pacs-"


def pacs_pdf_key(report_id: uuid.UUID, version: int) -> str:
    """Where the sync keeps the PDF the PACS gave for `version`: a key of its own per build, so
    a run that loses a race (the report signed meanwhile) never overwrites the PDF of the
    version recorded instead."""
    return f"{_pacs_pdf_prefix(report_id, version)}{uuid.uuid4().hex}.pdf"


def current_pdf_key(report: Report) -> str | None:
    """The object of the latest signed version's PDF if one was kept (made by the gateway, or
    given by the PACS); None if it has to be made."""
    key = report.pdf_key
    if key is not None and (
        key == pdf_key(report) or key.startswith(_pacs_pdf_prefix(report.id, report.version))
    ):
        return key
    return None


def copy_key(report_id: uuid.UUID, version: int, sop_instance_uid: str) -> str:
    """The Encapsulated PDF instance built for writing `version` back (its own per build)."""
    return f"reports/{report_id}/v{version}-{sop_instance_uid}.dcm"
