"""How a process logs: text for people, or one JSON object per line for a log pipeline.

    configure_logging("info", "json")    # serve --log-format json (INFERLANE_LOG_FORMAT=json)
    log.info("loaded %s", name, extra={"model": "fraud", "version": "3"})
    # {"ts": "2026-01-05T10:00:00.123Z", "level": "info", "logger": "inferlane.server", "msg": "loaded fraud",
    #  "model": "fraud", "version": "3"}

JSON mode formats every record the process writes through ``logging`` the same way, uvicorn's
included (their own handlers are removed so that their records reach the root handler), and
turns on one line per request (transport/http/requestlog.py). Fields passed with ``extra=`` become
top-level keys; an exception becomes ``exc`` (its traceback as one string), so a record is always
one line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: whatever else a record carries came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, milliseconds), ``level``, ``logger``, ``msg``, the
    record's extra fields, and ``exc`` / ``stack`` when present. A value JSON cannot hold is
    written as its ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """Send every record at ``level`` or above to stderr, as text, or as JSON (replacing any earlier set-up)."""
    if fmt == "text":  # as before JSON existed: a root handler set up earlier (e.g. by a test) is kept
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # warnings.warn output is a record too, not a bare stderr line
    for name in _UVICORN:  # uvicorn's own handlers would write text; let the root handler write it
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

