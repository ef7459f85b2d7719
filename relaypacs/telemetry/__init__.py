"""What operators see of the gateway: Prometheus metrics, structured logs with a request id on
every line, and error reports to Sentry when a DSN is configured, never with patient data.

It sits just above the base layer (config): every other layer may count, log and report through
it, and it knows nothing of any domain."""

from relaypacs.telemetry.logs import REQUEST_ID, JsonFormatter, configure_logging
from relaypacs.telemetry.metrics import (
    MULTIPROCESS_ENV,
    multiprocess_dir,
    observe_request,
    prepare_multiprocess_dir,
    process_started,
    process_stopped,
    render_metrics,
)
from relaypacs.telemetry.sentry import close_sentry, init_sentry, report_exception, scrub_event

__all__ = [
    "MULTIPROCESS_ENV",
    "REQUEST_ID",
    "JsonFormatter",
    "close_sentry",
    "configure_logging",
    "init_sentry",
    "multiprocess_dir",
    "observe_request",
    "prepare_multiprocess_dir",
    "process_started",
    "process_stopped",
    "render_metrics",
    "report_exception",
    "scrub_event",
]
