"""Logging: JSON lines in the cluster, key=value text locally, a request id on every line.

Callers pass structured fields with `extra={...}`; nothing here ever sees a secret because
no caller logs payloads, tokens or keys (tests capture the logs to prove it).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime
from typing import Any

from app.settings import Settings

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else came from `extra=`. uvicorn (and Litestar's
# own logging config) add `color_message`, the message again with ANSI colour codes: noise in
# a log line, and escape codes in a terminal.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


REQUEST_ID_HEADER = b"x-request-id"
# An incoming id is kept only if it is short and plain, so it is safe in headers and logs.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _stamp_request_id(base: Any) -> Any:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        rid = request_id.get()
        if rid is not None:
            record.request_id = rid
        return record

    make_record.stamps_request_id = True  # type: ignore[attr-defined]
    return make_record


def install_request_id_stamp() -> None:
    """Put the current request id on every LogRecord when it is made, not when it is
    formatted: handlers that format later (queues, pytest's caplog) still see it."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "stamps_request_id", False):
        logging.setLogRecordFactory(_stamp_request_id(factory))


class RequestIdMiddleware:
    """Plain ASGI: take a sane X-Request-ID or make one, hold it in `request_id` for the
    request's log lines, and send it back in the response header."""

    def __init__(self, app: Any) -> None:
        self.app = app
        install_request_id_stamp()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), b"")
        rid = incoming.decode("latin-1")
        if not _SANE_REQUEST_ID.fullmatch(rid):
            rid = secrets.token_hex(16)  # as random as uuid4().hex, a third of its cost

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER
                ]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid.encode())]}
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    # request_id is among them: the record factory stamped it when the record was made.
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


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
    root.setLevel(settings.log_level)
    # Audit events are always JSON lines, whatever the format of the rest, so they can be
    # shipped and parsed on their own.
    audit = logging.getLogger("keychain.audit")
    audit_handler = logging.StreamHandler(sys.stderr)
    audit_handler.setFormatter(JsonFormatter())
    audit.handlers[:] = [audit_handler]
    audit.propagate = False
    # The audit trail is not chatter: KEYCHAIN_LOG_LEVEL=WARNING quiets the rest, never it.
    audit.setLevel(logging.INFO)
    # Their INFO lines are start-up chatter (full initdb/pg_ctl transcripts, plugin setup).
    for noisy in ("pgserver", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
