"""What an upload run reports: each study's status and result, the run's summary, the options
and the progress listener the command line plugs in."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from relaypacs.client.archive import ArchiveLimits
from relaypacs.client.delivery import (
    NOT_DELIVERED,
    NOT_FOLLOWED,
    Delivery,
)
from relaypacs.client.discovery import Discovery
from relaypacs.client.errors import (
    ExitCode,
)
from relaypacs.client.manifest import FileProblem, StudyPlan


class StudyStatus(StrEnum):
    VALIDATED = "validated"  # complete answered 202: accepted for forwarding
    PARTIAL = "partial"  # accepted without the files it refused (listed in errors)
    ALREADY_DELIVERED = "already_delivered"  # 409 study_already_delivered at init
    REJECTED = "rejected"  # the server's validation refused files (422 upload_rejected)
    FAILED = "failed"  # a permanent error here or on a chunk; not completed
    INTERRUPTED = "interrupted"  # gave up after retries or lost the upload: run again
    NOT_STARTED = "not_started"  # the run stopped before this study


# The gateway has the study: validated now, or earlier.
ACCEPTED = frozenset({StudyStatus.VALIDATED, StudyStatus.PARTIAL, StudyStatus.ALREADY_DELIVERED})

# Chunk errors that are worth a few more tries (nothing was kept by the server).


@dataclass(slots=True)
class UploadOptions:
    parallel: int = 4
    hash_workers: int = max(1, min(4, os.cpu_count() or 1))
    state_dir: Path | None = None
    archive_limits: ArchiveLimits | None = None
    # How many times ``complete`` may answer upload_incomplete before giving up.
    complete_rounds: int = 3
    # How long to poll an upload still being validated after ``complete``.
    validation_wait_seconds: float = 600.0
    # --wait: follow every accepted study until the PACS has it (or refused some instance).
    wait: bool = False
    wait_timeout: float = 3600.0
    # Seconds between polls of a study: the first, and the most when nothing changes.
    wait_poll_min: float = 1.0
    wait_poll_max: float = 5.0
    # Strict mode: a study with any refused file is rejected whole (nothing forwarded).
    all_or_nothing: bool = False
    # The chunk size to ask the gateway for; None: fitted to the link (relaypacs.client.link).
    chunk_size: int | None = None
    # Whole files up to batch_file_max bytes go several per request (a chunk batch) of up to
    # batch_bytes (never more than the upload's chunk size); 0: one chunk per request.
    batch_bytes: int = 2 * 1024 * 1024
    batch_file_max: int = 1024 * 1024


class ProgressListener(Protocol):
    """What the engine tells a progress display; every call happens on the event loop."""

    def discovered(self, discovery: Discovery, studies: Sequence[StudyPlan]) -> None: ...
    def hashing(self, total_bytes: int) -> None: ...
    def hashed(self, n_bytes: int) -> None: ...
    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None: ...
    def sent(self, n_bytes: int) -> None: ...
    def study_finished(self, result: StudyResult) -> None: ...
    # --wait: the studies followed, then each one's ``delivery`` after every poll, then final.
    def waiting(self, results: Sequence[StudyResult]) -> None: ...
    def delivery_progress(self, result: StudyResult) -> None: ...
    def delivery_finished(self, result: StudyResult) -> None: ...


class NullProgress:
    def discovered(self, discovery: Discovery, studies: Sequence[StudyPlan]) -> None:
        pass

    def hashing(self, total_bytes: int) -> None:
        pass

    def hashed(self, n_bytes: int) -> None:
        pass

    def study_started(self, plan: StudyPlan, total_bytes: int, already_bytes: int) -> None:
        pass

    def sent(self, n_bytes: int) -> None:
        pass

    def study_finished(self, result: StudyResult) -> None:
        pass

    def waiting(self, results: Sequence[StudyResult]) -> None:
        pass

    def delivery_progress(self, result: StudyResult) -> None:
        pass

    def delivery_finished(self, result: StudyResult) -> None:
        pass


@dataclass(slots=True)
class StudyResult:
    study_instance_uid: str
    status: StudyStatus
    upload_id: str | None = None
    number: int = 0  # the study's place in the run (StudyPlan.number)
    files: int = 0  # sent (identical copies: once)
    instances: int = 0  # the gateway accepted (0 unless accepted)
    total_bytes: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0  # already on the server
    chunks_sent: int = 0
    chunks_already_stored: int = 0  # sent, but the server said it had them already
    batches_sent: int = 0  # chunk batches (several whole files per request) among chunks_sent
    chunk_size: int = 0  # the upload's (the server's answer to the one asked for)
    duplicates_skipped: int = 0
    modalities: list[str] = field(default_factory=list)
    study_date: str = ""
    errors: list[FileProblem] = field(default_factory=list)
    message: str | None = None
    # Set when this study stopped the whole run: "auth" or "unreachable".
    abort: str | None = None
    # With --wait: where the study stands with the PACS (None: not followed).
    delivery: Delivery | None = None

    @property
    def file_count(self) -> int:
        """``files`` (as StudyPlan.file_count)."""
        return self.files

    @property
    def accepted(self) -> bool:
        """Whether the gateway has the study (validated, now or before)."""
        return self.status in ACCEPTED

    @property
    def files_refused(self) -> int:
        """The files named in ``errors``: refused by the gateway's validation or on their
        way there."""
        return len({problem.name for problem in self.errors})

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "study_instance_uid": self.study_instance_uid,
            "upload_id": self.upload_id,
            "status": self.status.value,
            "accepted": self.accepted,
            "files": self.files,
            "instances": self.instances,
            "total_bytes": self.total_bytes,
            "bytes_sent": self.bytes_sent,
            "bytes_skipped": self.bytes_skipped,
            "chunks_sent": self.chunks_sent,
            "chunks_already_stored": self.chunks_already_stored,
            "batches_sent": self.batches_sent,
            "chunk_size": self.chunk_size,
            "duplicates_skipped": self.duplicates_skipped,
            "modalities": list(self.modalities),
            "study_date": self.study_date,
            "errors": [e.as_dict() for e in self.errors],
            "message": self.message,
            "delivery": None if self.delivery is None else self.delivery.as_dict(),
        }


@dataclass(slots=True)
class RunSummary:
    studies: list[StudyResult] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # by SkipReason value
    skipped_files: dict[str, list[str]] = field(default_factory=dict)  # their names
    archives: int = 0
    hash_cache_hits: int = 0
    error: str | None = None  # why the run stopped early, if it did
    error_kind: str | None = None  # "auth", "unreachable", "input"
    # Wall-clock seconds per phase: discover_seconds, hash_seconds, upload_seconds and, with
    # --wait, wait_seconds.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """4 auth failed, else 3 gave up (resumable) or stopped waiting for the PACS, else 1
        rejected/failed, else 5 not delivered (--wait), else 6 accepted without some files,
        else 0; 2 when there was nothing to upload or the input was refused."""
        if self.error_kind == "auth":
            return ExitCode.AUTH
        if self.error_kind == "input":
            return ExitCode.USAGE
        statuses = {s.status for s in self.studies}
        if (
            self.error_kind == "unreachable"
            or statuses & {StudyStatus.INTERRUPTED, StudyStatus.NOT_STARTED}
            or self.wait_unfinished
        ):
            return ExitCode.UNREACHABLE
        if statuses & {StudyStatus.REJECTED, StudyStatus.FAILED}:
            return ExitCode.REJECTED
        if any(d.status in NOT_DELIVERED for d in self.deliveries):
            return ExitCode.NOT_DELIVERED
        if StudyStatus.PARTIAL in statuses:
            return ExitCode.PARTIAL
        if not self.studies:
            return ExitCode.USAGE
        return ExitCode.OK

    @property
    def deliveries(self) -> list[Delivery]:
        return [s.delivery for s in self.studies if s.delivery is not None]

    @property
    def wait_unfinished(self) -> bool:
        """Whether --wait stopped following some study before its end (timed out, or the
        gateway could not be asked): the gateway goes on forwarding it."""
        return any(d.status in NOT_FOLLOWED for d in self.deliveries)

    def as_dict(self) -> dict[str, Any]:
        def count(status: StudyStatus) -> int:
            return sum(1 for s in self.studies if s.status is status)

        accepted = [s for s in self.studies if s.accepted]
        not_accepted = [s for s in self.studies if not s.accepted]
        return {
            "exit_code": self.exit_code,
            "error": self.error,
            "studies": [s.as_dict() for s in self.studies],
            "skipped": dict(self.skipped),
            "skipped_files": {reason: list(names) for reason, names in self.skipped_files.items()},
            "archives": self.archives,
            "timings": {key: round(value, 3) for key, value in self.timings.items()},
            "totals": {
                "studies": len(self.studies),
                **{status.value: count(status) for status in StudyStatus},
                "studies_accepted": len(accepted),
                "studies_not_accepted": len(not_accepted),
                # What the gateway accepted (validated now or before), without the files it
                # refused from accepted studies.
                "files": sum(s.files - s.files_refused for s in accepted),
                "instances": sum(s.instances for s in accepted),
                "total_bytes": sum(s.total_bytes for s in accepted),
                # What this run sent (to every study, accepted or not), what it did not
                # have to send (on the gateway already).
                "bytes_sent": sum(s.bytes_sent for s in self.studies),
                "bytes_skipped": sum(s.bytes_skipped for s in self.studies),
                "chunks_sent": sum(s.chunks_sent for s in self.studies),
                "chunks_already_stored": sum(s.chunks_already_stored for s in self.studies),
                "batches_sent": sum(s.batches_sent for s in self.studies),
                "hash_cache_hits": self.hash_cache_hits,
                # Everything found, and what of it the gateway does not have.
                "files_found": sum(s.files for s in self.studies),
                "bytes_found": sum(s.total_bytes for s in self.studies),
                "files_not_accepted": sum(s.files for s in not_accepted),
                "files_refused": sum(s.files_refused for s in self.studies),
                "files_refused_in_accepted": sum(s.files_refused for s in accepted),
                "files_skipped": sum(self.skipped.values()),
                "duplicates_skipped": sum(s.duplicates_skipped for s in self.studies),
                # With --wait: the instances the PACS confirmed, and refused.
                "pacs_confirmed": sum(d.confirmed for d in self.deliveries),
                "pacs_refused": sum(d.failed or len(d.failures) for d in self.deliveries),
            },
        }


# -- one study ----------------------------------------------------------------------------
