"""The report domain's objects in object storage, all under `reports/<report id>/`: their keys,
and the sweep of those that no row names.

- `v<n>.pdf`: the PDF of version n made by the gateway (GET /reports/{id}/pdf, the write-back);
  named by the version's row, made again from it when missing.
- `v<n>-pacs-<random>.pdf`: the PDF the PACS gave for version n (reports/sync.py), named by
  `report.pdf_key`; kept when the report is amended (the old keys were kept the same way).
- `v<n>-<SOP Instance UID>.dcm`: the Encapsulated PDF instance written back for version n
  (reports/writeback.py), named by its `report_pacs_copy` row.

The last two get a key of their own per build and are stored before the transaction that
records them (no transaction waits for object storage): a build that is cancelled, fails, or
loses a race between the two leaves an object that no row names. `sweep_orphans` (run by the
retention job) deletes those older than a grace period, far longer than any build, so that an
object stored for a build still under way is never touched.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator

from relaypacs.db import Database, utcnow
from relaypacs.reports import repository
from relaypacs.reports.models import Report
from relaypacs.storage import ObjectStorage
from relaypacs.telemetry.metrics import REPORT_OBJECTS_SWEPT

logger = logging.getLogger(__name__)

PREFIX = "reports/"
# A build stores its object, then records it: seconds apart, minutes with a slow PACS or store
# (the forwarding lease and the PACS timeouts end a build long before this).
ORPHAN_GRACE = dt.timedelta(hours=24)
_BATCH = 500  # reports looked up per query


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


def _report_id(key: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(key.removeprefix(PREFIX).split("/", 1)[0])
    except ValueError:
        return None


def named_by(rows: repository.StoredObjects | None, report_id: uuid.UUID, key: str) -> bool:
    """Whether the rows of report `report_id` (None: it does not exist) name this object (see
    the module)."""
    if rows is None:  # no such report (any more)
        return False
    if key == rows.pdf_key or key in rows.copy_keys:
        return True
    for version, source in rows.versions.items():
        if key == version_pdf_key(report_id, version):
            return True
        # The PACS's PDF of a version amended since: kept, as it was before it had a key of
        # its own (that of the latest version is `pdf_key`: an older build's is an orphan).
        if (
            source == "pacs"
            and version < rows.version
            and key.startswith(_pacs_pdf_prefix(report_id, version))
        ):
            return True
    return False


def _batches(ids: list[uuid.UUID]) -> Iterator[list[uuid.UUID]]:
    for start in range(0, len(ids), _BATCH):
        yield ids[start : start + _BATCH]


async def sweep_orphans(
    db: Database,
    storage: ObjectStorage,
    *,
    grace: dt.timedelta = ORPHAN_GRACE,
    now: dt.datetime | None = None,
) -> int:
    """Delete the objects under `reports/` last written more than `grace` before `now` that no
    row names (see the module); returns how many. The rows are read after the listing: an
    object recorded meanwhile is named by then, and one older than `grace` is no build's."""
    cutoff = (now or utcnow()) - grace
    old: dict[uuid.UUID | None, list[str]] = {}
    async for key, modified in storage.list_modified(PREFIX):
        if modified < cutoff:
            old.setdefault(_report_id(key), []).append(key)
    orphans = list(old.pop(None, []))  # not a report's key at all
    ids = [report_id for report_id in old if report_id is not None]
    for batch in _batches(ids):
        async with db.read_sessionmaker() as session, session.begin():
            named = await repository.stored_objects(session, batch)
        for report_id in batch:
            orphans += [
                k for k in old[report_id] if not named_by(named.get(report_id), report_id, k)
            ]
    for key in orphans:
        await storage.delete(key)
        REPORT_OBJECTS_SWEPT.inc()
    if orphans:
        # Keys name reports by id only (no patient data).
        logger.info("report objects: %d objects that no row named were deleted", len(orphans))
    return len(orphans)
