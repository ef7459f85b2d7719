"""Error reports to Sentry, only when RELAYPACS_SENTRY_DSN is set, scrubbed of patient data.

What leaves the process: the exception's type and frames (file, line, function; no local
variables, no source context's values), the route template, the release and environment.
What never does (`scrub_event`, the last step before sending): request bodies, query strings,
cookies, headers but a few harmless ones, exception messages (they may quote a patient's name
or a file's content), log messages of breadcrumbs' data, the user."""

from __future__ import annotations

import logging
import sys
from typing import Any

from relaypacs import __version__
from relaypacs.config import Settings

logger = logging.getLogger("relaypacs.sentry")

# Request headers that may be sent: nothing in them identifies a person or grants access.
SAFE_HEADERS = frozenset({"content-type", "content-length", "accept", "user-agent", "host"})
_REMOVED = "[removed]"


def _scrub_request(request: dict[str, Any]) -> None:
    for key in ("data", "query_string", "cookies", "env"):
        request.pop(key, None)
    headers = request.get("headers")
    if isinstance(headers, dict):
        request["headers"] = {k: v for k, v in headers.items() if k.lower() in SAFE_HEADERS}
    url = request.get("url")
    if isinstance(url, str):
        request["url"] = url.split("?", 1)[0]


def _scrub_exception(exception: dict[str, Any]) -> None:
    for value in exception.get("values") or []:
        if not isinstance(value, dict):
            continue
        if value.get("value"):
            value["value"] = _REMOVED
        for frame in (value.get("stacktrace") or {}).get("frames") or []:
            if isinstance(frame, dict):
                for key in ("vars", "context_line", "pre_context", "post_context"):
                    frame.pop(key, None)


def scrub_event(event: dict[str, Any], _hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry's before_send (and before_send_transaction): the event without patient data."""
    request = event.get("request")
    if isinstance(request, dict):
        _scrub_request(request)
    exception = event.get("exception")
    if isinstance(exception, dict):
        _scrub_exception(exception)
    event.pop("user", None)
    event.pop("extra", None)
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        logentry.pop("params", None)  # the values interpolated into the message
    breadcrumbs = event.get("breadcrumbs")
    values = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    for crumb in values or []:
        if isinstance(crumb, dict):
            crumb.pop("data", None)  # an HTTP breadcrumb's URL names studies
    for span in event.get("spans") or []:
        if isinstance(span, dict):
            span.pop("data", None)
            if isinstance(span.get("description"), str):
                span["description"] = span["description"].split("?", 1)[0]
    return event


def init_sentry(settings: Settings) -> bool:
    """Start reporting if a DSN is configured; whether it was."""
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        release=f"relaypacs@{__version__}",
        environment=settings.sentry_environment,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        # No personal data by default (send_default_pii stays off), and none of these:
        include_local_variables=False,
        include_source_context=False,
        max_request_body_size="never",
        before_send=scrub_event,  # type: ignore[arg-type]
        before_send_transaction=scrub_event,  # type: ignore[arg-type]
        # Log records become breadcrumbs, not events of their own: the unexpected error is
        # reported once, as the exception.
        integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
    )
    logger.info("error reports go to Sentry (release relaypacs@%s)", __version__)
    return True


def report_exception(exc: BaseException) -> None:
    """An unexpected error, to Sentry if it is on (scrubbed by scrub_event on the way out).
    The HTTP surface catches every error before Sentry's own middleware could see it."""
    if "sentry_sdk" not in sys.modules:  # never initialised: nothing to send, nothing to import
        return
    import sentry_sdk

    if sentry_sdk.get_client().is_active():
        sentry_sdk.capture_exception(exc)


def close_sentry() -> None:
    """Send what is pending and stop (the end of the lifespan)."""
    import sentry_sdk

    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=2.0)
        sentry_sdk.get_global_scope().set_client(None)  # inactive: nothing more is sent
