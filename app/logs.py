"""Logging: JSON lines in the cluster, key=value text locally, a request id on every line.

Callers pass structured fields with `extra={...}`; nothing here ever sees a secret because
no caller logs payloads, tokens or keys (tests capture the logs to prove it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

from app.settings import Settings

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    rid = request_id.get()
    if rid is not None:
        fields.setdefault("request_id", rid)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return f"{text} {extras}" if extras else text


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Audit events are always JSON lines, whatever the format of the rest, so they can be
    # shipped and parsed on their own.
    audit = logging.getLogger("keychain.audit")
    audit_handler = logging.StreamHandler(sys.stderr)
    audit_handler.setFormatter(JsonFormatter())
    audit.handlers[:] = [audit_handler]
    audit.propagate = False
    # Their INFO lines are start-up chatter (full initdb/pg_ctl transcripts, plugin setup).
    for noisy in ("pgserver", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
