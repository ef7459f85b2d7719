"""Logging: plain text or one JSON object per line (RELAYPACS_LOG_FORMAT=json), each line with
the id of the request it belongs to (the X-Request-ID the client was answered with).

The request id lives in a context variable that relaypacs.middleware sets for each request:
everything that request runs, and the tasks it starts, log it. An exception is written as its
type and where it went through, never its message (it may carry patient data)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Literal

REQUEST_ID: ContextVar[str | None] = ContextVar("relaypacs_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` ("-" outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


def _where(exc_info: BaseException | None) -> list[str]:
    if exc_info is None:
        return []
    return [
        f"{frame.filename}:{frame.lineno} in {frame.name}"
        for frame in traceback.extract_tb(exc_info.__traceback__)
    ]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, and
    for an exception its type and frames."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
            "process": record.process,
        }
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = type(record.exc_info[1]).__name__
            line["frames"] = _where(record.exc_info[1])
        return json.dumps(line, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def formatException(self, ei: object) -> str:
        # The type and the frames, not the message (patient data may be in it).
        exc = ei[1] if isinstance(ei, tuple) else None
        if not isinstance(exc, BaseException):
            return ""
        return "\n".join([type(exc).__name__, *(f"  {w}" for w in _where(exc))])


def configure_logging(
    *,
    level: str,
    fmt: Literal["text", "json"],
    quiet: Iterable[str] = (),
) -> None:
    """The root logger writes to stderr in `fmt`; the `quiet` loggers (which would write query
    parameters or message bodies) stay at WARNING whatever the level."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's own loggers propagate to the root: one format for every line.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
