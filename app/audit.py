"""Audit events: who wrote, deleted, cleaned up or was denied, and how it ended; never the data.

Route handlers that change state carry opt={"audit": True}; this middleware sees the final
status (including a guard's 401/403, for any route) and emits one event on `keychain.audit`,
named by the handler's operation id.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.errors import InvalidEntry
from app.keychain.controller import cache_key_sent
from app.response_status import StatusRecorder

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


class AuditMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        recorder = StatusRecorder(send)
        try:
            await next_app(scope, receive, recorder)
        finally:
            status = recorder.status
            handler = scope["route_handler"]
            denied = status in (401, 403)
            if handler.opt.get("audit") or denied:
                principal = (scope.get("state") or {}).get("principal")
                audit_event(
                    str(handler.operation_id or handler.handler_name),
                    "denied" if denied else ("ok" if status < 400 else "failed"),
                    status=status,
                    actor=getattr(principal, "name", None),
                    role=getattr(principal, "role", None),
                    cache_key=_target(scope),
                    client=(scope.get("client") or ("unknown",))[0],
                    method=scope["method"],
                )
