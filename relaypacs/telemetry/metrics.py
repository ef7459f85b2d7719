"""The gateway's Prometheus metrics, defined once, and their exposition.

Names follow Prometheus's conventions (`relaypacs_` prefix, base units, `_total` on counters).
Labels carry only bounded, non-identifying values (route templates, status codes, outcomes,
target names from the configuration): never a path as sent, an id, a UID or a patient's detail.

With several worker processes (`relaypacs serve --workers N`) each process writes its values
to files in the directory named by PROMETHEUS_MULTIPROC_DIR (set by the command before the
workers start, and before prometheus_client is first imported), and any worker's `/metrics`
adds them all up.

Hot paths (the chunk PUT) use children bound once at import (`CHUNKS_STORED.inc()`), never a
`.labels()` lookup per call."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

from relaypacs.telemetry.processes import (
    GatewayProcessesCollector,
    register_process,
    unregister_process,
)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# --- HTTP ---------------------------------------------------------------------------------------

HTTP_REQUEST_DURATION = Histogram(
    "relaypacs_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status code.",
    ("method", "route", "status"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# --- uploads ------------------------------------------------------------------------------------

UPLOAD_CHUNKS = Counter("relaypacs_upload_chunks", "Chunks received, by outcome.", ("outcome",))
UPLOAD_BYTES = Counter(
    "relaypacs_upload_bytes", "Bytes of chunks received, by outcome.", ("outcome",)
)
UPLOAD_FILES = Counter(
    "relaypacs_upload_files", "Files judged at complete, by verdict.", ("outcome",)
)
UPLOADS = Gauge(
    "relaypacs_uploads",
    "Uploads by status (read from the database at each scrape).",
    ("status",),
    multiprocess_mode="mostrecent",
)
CHUNK_OUTCOMES = ("stored", "already_stored", "conflict", "rejected", "not_writable", "failed")
# Bound once: the chunk PUT counts with a plain .inc().
CHUNKS = {outcome: UPLOAD_CHUNKS.labels(outcome) for outcome in CHUNK_OUTCOMES}
CHUNK_BYTES = {outcome: UPLOAD_BYTES.labels(outcome) for outcome in CHUNK_OUTCOMES}
CHUNKS_LOST = Counter(
    "relaypacs_upload_chunks_lost",
    "Acknowledged chunks the storage no longer held (found at complete or by the scheduled "
    "check); forgotten, so that clients send them again.",
)
FILES_ACCEPTED = UPLOAD_FILES.labels("accepted")
FILES_REFUSED = UPLOAD_FILES.labels("refused")
FILES_PIPELINED = Counter(
    "relaypacs_upload_files_pipelined",
    "Instances queued for the PACS on arrival, while their study was still uploading "
    "(RELAYPACS_PIPELINE).",
)

# --- forwarding ---------------------------------------------------------------------------------

FORWARD_QUEUE_JOBS = Gauge(
    "relaypacs_forward_queue_jobs",
    "Forward jobs not finished (queued, running or waiting to retry), read at each scrape.",
    multiprocess_mode="mostrecent",
)
FORWARD_OLDEST_JOB_AGE = Gauge(
    "relaypacs_forward_oldest_job_age_seconds",
    "Age of the oldest unfinished forward job (0 when none), read at each scrape.",
    multiprocess_mode="mostrecent",
)
FORWARD_BREAKER_OPEN = Gauge(
    "relaypacs_forward_breaker_open",
    "Whether a PACS target's circuit breaker holds requests back (1: open or half-open).",
    ("target",),
    multiprocess_mode="max",
)
FORWARD_ATTEMPTS = Counter(
    "relaypacs_forward_attempts",
    "Forward job attempts by target and outcome (delivered, failed for good, retry).",
    ("target", "outcome"),
)
FORWARD_INSTANCES = Counter(
    "relaypacs_forward_instances",
    "Instances answered by a PACS's STOW-RS, by target and disposition (stored, retry, failed).",
    ("target", "disposition"),
)
FORWARD_DELIVERY = Histogram(
    "relaypacs_forward_delivery_seconds",
    "From a study's acceptance (its forward job) to the PACS confirming it, by target.",
    ("target",),
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)
PACS_REQUEST_DURATION = Histogram(
    "relaypacs_pacs_request_duration_seconds",
    "Time of a request to a PACS, by target and operation (stow, qido, verify, probe).",
    ("target", "operation"),
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
PACS_REQUEST_ERRORS = Counter(
    "relaypacs_pacs_request_errors",
    "Requests to a PACS that failed, by target, operation and kind (timeout, network, http_5xx).",
    ("target", "operation", "kind"),
)

# --- dependencies -------------------------------------------------------------------------------

DEPENDENCY_UP = Gauge(
    "relaypacs_dependency_up",
    "Whether a dependency answered the last readiness check (1) or not (0).",
    ("dependency",),
    multiprocess_mode="mostrecent",
)
VALIDATION_DURATION = Histogram(
    "relaypacs_validation_duration_seconds",
    "Time to verify a study's files at complete (hashes and DICOM validation).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
VALIDATION_REFUSALS = Counter(
    "relaypacs_validation_refusals",
    "Files refused at complete, by the refusal's code (sha256_mismatch, not_dicom...).",
    ("code",),
)
DATABASE_POOL = Gauge(
    "relaypacs_database_pool_connections",
    "This process's database connections by state (in_use, idle), read at each scrape.",
    ("state",),
    multiprocess_mode="livesum",
)
SSE_CONNECTIONS = Gauge(
    "relaypacs_sse_connections",
    "Notification streams (Server-Sent Events) open on this process, read at each scrape.",
    multiprocess_mode="livesum",
)
SCHEDULED_RUNS = Counter(
    "relaypacs_scheduled_runs",
    "Runs of the scheduled jobs by job and outcome (ok, failed).",
    ("job", "outcome"),
)
EMAILS = Counter(
    "relaypacs_emails",
    "Emails by outcome: sent, retried (a temporary failure), failed (given up), skipped "
    "(no address, or turned off).",
    ("outcome",),
)
# Bound at import, like the chunk counters: each outcome is exported (as 0) from the start.
EMAIL_OUTCOMES = {o: EMAILS.labels(o) for o in ("sent", "retried", "failed", "skipped")}
EMAIL_OUTBOX = Gauge(
    "relaypacs_email_outbox",
    "Email outbox rows by status (pending: still to send), read at each scrape.",
    ("status",),
    multiprocess_mode="mostrecent",
)
EMAIL_OUTBOX_OLDEST_PENDING = Gauge(
    "relaypacs_email_outbox_oldest_pending_age_seconds",
    "Age of the oldest email still to send (0 when none), read at each scrape.",
    multiprocess_mode="mostrecent",
)
REPORT_OBJECTS_SWEPT = Counter(
    "relaypacs_report_orphan_objects_deleted",
    "Objects under the reports' key prefix that no row named (left by a cancelled or failed "
    "build of a report's PDF or write-back instance), deleted by the retention job.",
)
STORAGE_FULL = Counter(
    "relaypacs_storage_full",
    "Writes the object storage refused because it is full (the client was told 507).",
)
DATABASE_UNAVAILABLE = Counter(
    "relaypacs_database_unavailable",
    "Requests answered 503 because the database could not be reached.",
)


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROCESS_ENV)
    return Path(value) if value else None


def prepare_multiprocess_dir(path: Path) -> None:
    """An empty directory for the workers' metric files (left-overs of a previous run would be
    added to this one's)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)


def process_started() -> None:
    """A worker process starts: its CPU, memory and descriptors count in the process metrics
    (relaypacs/telemetry/processes.py)."""
    directory = multiprocess_dir()
    if directory is not None:
        register_process(directory)


def process_stopped() -> None:
    """A worker process stops: its live gauges and its process metrics no longer count."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
        unregister_process(directory)


def render_metrics() -> tuple[bytes, str]:
    """The exposition of every metric (of all worker processes), and its content type."""
    directory = multiprocess_dir()
    if directory is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(GatewayProcessesCollector(directory))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# The request histogram's children, bound on first use of each (method, route, status).
_request_children: dict[tuple[str, str, int], Histogram] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """One answered request; `route` is the template ("/api/v1/uploads/{upload_id}"), or
    "(no route)" for a path no route matched."""
    key = (method, route, status)
    child = _request_children.get(key)
    if child is None:
        child = HTTP_REQUEST_DURATION.labels(method, route, str(status))
        _request_children[key] = child
    child.observe(seconds)


def exported_metric_names() -> set[str]:
    """The names of the series this module exports (what alert rules and dashboards may name)."""
    names: set[str] = set()
    for metric in (
        HTTP_REQUEST_DURATION,
        UPLOAD_CHUNKS,
        UPLOAD_BYTES,
        UPLOAD_FILES,
        CHUNKS_LOST,
        UPLOADS,
        FORWARD_QUEUE_JOBS,
        FORWARD_OLDEST_JOB_AGE,
        FORWARD_BREAKER_OPEN,
        FORWARD_ATTEMPTS,
        FORWARD_INSTANCES,
        FORWARD_DELIVERY,
        VALIDATION_DURATION,
        VALIDATION_REFUSALS,
        DATABASE_POOL,
        SCHEDULED_RUNS,
        SSE_CONNECTIONS,
        EMAILS,
        EMAIL_OUTBOX,
        EMAIL_OUTBOX_OLDEST_PENDING,
        REPORT_OBJECTS_SWEPT,
        PACS_REQUEST_DURATION,
        PACS_REQUEST_ERRORS,
        DEPENDENCY_UP,
        STORAGE_FULL,
        DATABASE_UNAVAILABLE,
    ):
        names.update(_series_names(metric))
    return names


def _series_names(metric: MetricWrapperBase) -> set[str]:
    name: str = metric._name  # the family name, without suffixes
    if isinstance(metric, Histogram):
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if isinstance(metric, Counter):
        return {f"{name}_total", f"{name}_created"}
    return {name}
