"""Audit events: who read, wrote, deleted, cleaned up, minted or was denied; never the data.

Route handlers that change state carry opt={"audit": True}; this middleware sees the final
status (including RequireRole's 401/403, for any route) and emits one event on `keychain.audit`,
named by the handler's operation id. Reads are the hot path, so ReadAudit counts them in memory
and a flush emits, per actor and outcome, events mapping each key read to its count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send

from app.auth import Principal
from app.errors import InvalidEntry
from app.keychain.paths import cache_key_sent
from app.response_status import StatusRecorder

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

audit_log = logging.getLogger("keychain.audit")


def audit_event(
    action: str,
    outcome: str,
    *,
    actor: str | None,
    role: str | None,
    cache_key: str | None = None,
    client: str | None = None,
    **details: Any,
) -> None:
    audit_log.info(
        "audit",
        extra={
            "audit_action": action,
            "outcome": outcome,
            "actor": actor,
            "role": role,
            "cache_key": cache_key,
            "client": client,
            **details,
        },
    )


READ_ACTION = "getEntry"
# Keys per read event: a flush after a busy second of random keys is thousands of keys, and a
# log line per key stalled every request for tens of ms; a line per hundred keys stays well
# under the 16 KiB at which container runtimes split log lines.
READS_PER_EVENT = 100


class ReadAudit:
    """Reads counted per (actor, role, outcome) and key between flushes; a flush emits, per
    actor, role and outcome, events whose `reads` map each key read to its count.

    Bounded: once `max_pending` distinct reads wait, the next record flushes at once.
    """

    def __init__(self, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self._pending: dict[tuple[str, str, str], dict[str, int]] = {}
        self._distinct = 0
        self._first_at: float | None = None

    def record(self, principal: Principal, cache_key: str, outcome: str) -> None:
        event = (principal.name, principal.role, outcome)
        reads = self._pending.get(event, {})
        if cache_key in reads:
            reads[cache_key] += 1
            return
        if self._distinct >= self.max_pending:
            self.flush()
        if self._first_at is None:
            self._first_at = time.time()
        self._pending.setdefault(event, {})[cache_key] = 1
        self._distinct += 1

    def flush(self) -> int:
        """Emit every pending read; answers how many events went out."""
        pending, first_at = self._pending, self._first_at
        self._pending, self._distinct, self._first_at = {}, 0, None
        if first_at is None:  # nothing was read
            return 0
        since = datetime.fromtimestamp(first_at, UTC).isoformat()
        events = 0
        for (actor, role, outcome), reads in pending.items():
            keys = list(reads)
            for start in range(0, len(keys), READS_PER_EVENT):
                chunk = {key: reads[key] for key in keys[start : start + READS_PER_EVENT]}
                audit_event(
                    READ_ACTION,
                    outcome,
                    actor=actor,
                    role=role,
                    reads=chunk,
                    count=sum(chunk.values()),
                    since=since,
                )
                events += 1
        return events


async def run_read_audit_flusher(audit: ReadAudit, interval: float) -> None:
    """Flush every `interval` seconds; cancelled at shutdown, it flushes what is left."""
    try:
        while True:
            await asyncio.sleep(interval)
            audit.flush()
    finally:
        audit.flush()


def _target(scope: Scope) -> str | None:
    params = scope.get("path_params") or {}
    if "cache_key" in params:
        try:
            return cache_key_sent(scope)  # the key the handler acted on, not the routed one
        except InvalidEntry:
            return None
    if "execution_id" in params:
        return f"execution:{params['execution_id']}"
    return None


AUDIT_DETAILS = "audit_details"


def add_audit_details(scope: Scope, **details: Any) -> None:
    """Fields a handler adds to its request's one audit event (say, what a push dropped);
    they are emitted whatever the answer, so set them as soon as they are known."""
    scope["state"].setdefault(AUDIT_DETAILS, {}).update(details)


class AuditMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        # `scopes` above: only HTTP requests come here.
        scope = cast("HTTPScope", scope)
        recorder = StatusRecorder(send)
        try:
            await next_app(scope, receive, recorder)
        finally:
            status = recorder.status
            handler = cast("HTTPRouteHandler", scope["route_handler"])
            denied = status in (401, 403)
            if handler.opt.get("audit") or denied:
                state = scope.get("state") or {}
                principal = state.get("principal")
                audit_event(
                    str(handler.operation_id or handler.handler_name),
                    "denied" if denied else ("ok" if status < 400 else "failed"),
                    status=status,
                    actor=getattr(principal, "name", None),
                    role=getattr(principal, "role", None),
                    cache_key=_target(scope),
                    client=(scope.get("client") or ("unknown",))[0],
                    method=scope["method"],
                    **state.get(AUDIT_DETAILS, {}),
                )
