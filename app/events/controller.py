"""POST /api/events/secret-manager: Secret Manager's event notifications, as Pub/Sub pushes them.

Pub/Sub redelivers anything it does not get a 2xx for. So: a push that is not authentic is 401
(a misconfigured audience or account is fixed, then redelivery catches up); a body that is not
a Pub/Sub push is 400; a push whose message cannot be acted on is acknowledged as ignored (it
would be no better the next time); 2xx only once the drop has committed.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotFoundException

from app.audit import add_audit_details
from app.errors import InvalidPush, Unauthenticated, VerificationUnavailable
from app.events.secret_manager import Drop, PushBody, interpret
from app.keychain.service import KeychainService
from app.openapi import error_responses
from app.runtime import provide_keychain_service, runtime_of

# Secret Manager's messages are a few KiB; a Secret with every label, annotation and alias it
# allows is about 40 KiB as JSON, under 60 once base64-encoded. Twice that, and no more.
MAX_PUSH_BYTES = 128 * 1024
EVENTS_PATH = "/api/events/secret-manager"


class PushOutcome(msgspec.Struct, kw_only=True):
    result: Literal["dropped", "ignored"]
    detail: str
    # Entries dropped (0 when none was cached, or for a message delivered again).
    dropped: int = 0


class SecretManagerEventController(Controller):
    path = EVENTS_PATH
    tags = ["events"]
    security = [{"bearer": []}]
    dependencies = {"service": Provide(provide_keychain_service)}

    @post(
        "/",
        operation_id="secretManagerEvent",
        summary="Take a Secret Manager event notification pushed by Pub/Sub",
        description=(
            "The body Pub/Sub pushes (`message.attributes.eventType`, `secretId`, `versionId`, "
            "`message.data`), with the OIDC token of the push subscription's service account. A "
            "version disabled or destroyed drops its entries and those read through `latest`; a "
            "version added or enabled, or a rotation, drops what was read through `latest`; a "
            "deleted secret drops every version's. Anything else is acknowledged and ignored."
        ),
        status_code=200,
        request_max_body_size=MAX_PUSH_BYTES,
        opt={"audit": True},
        responses=error_responses(
            413,
            503,
            described={
                400: "Not a Pub/Sub push body",
                401: "No push token, or one that does not verify",
                404: "Not enabled on this server (KEYCHAIN_PUBSUB_AUDIENCE)",
            },
        ),
    )
    async def secret_manager_event(
        self, request: Request[Any, Any, Any], service: NamedDependency[KeychainService]
    ) -> PushOutcome:
        # Each step says in the audit event what it decided; whether that committed is the
        # event's outcome (ok, failed, denied) and status.
        audit = functools.partial(add_audit_details, request.scope)
        verifier = runtime_of(request.app.state).push_verifier
        if verifier is None:
            audit(result="refused", reason="not enabled")
            # As if the route were not there (a 5xx would page someone for a setting), but saying why.
            raise NotFoundException(
                "Secret Manager events are not enabled on this server: set KEYCHAIN_PUBSUB_AUDIENCE"
            )
        try:
            audit(pusher=await verifier.verify(request.headers.get("authorization", "")))
            # Read only once the pusher is known: a stranger's body is never looked at.
            body = _push_body(await request.body())
        except (Unauthenticated, VerificationUnavailable, InvalidPush) as exc:
            audit(result="refused", reason=str(exc))
            raise
        except HTTPException as exc:  # over MAX_PUSH_BYTES
            audit(result="refused", reason=exc.detail)
            raise
        message = body.message
        audit(
            event_type=message.attributes.get("eventType", "")[:64],
            message_id=(message.messageId or "")[:100],
            subscription=(body.subscription or "")[:300],
        )
        action = interpret(message)
        if not isinstance(action, Drop):
            audit(result="ignored", reason=action.reason)
            return PushOutcome(result="ignored", detail=action.reason)
        dropped = await service.purge(action.names, action.prefixes)
        audit(result="dropped", resource=action.resource, dropped=dropped)
        return PushOutcome(
            result="dropped",
            detail=f"dropped what the event makes stale of {action.resource}",
            dropped=dropped,
        )


def _push_body(raw: bytes) -> PushBody:
    """The push's envelope; InvalidPush saying why it is not one."""
    try:
        return msgspec.json.decode(raw, type=PushBody)
    except msgspec.ValidationError as exc:
        raise InvalidPush(f"not a Pub/Sub push body: {exc}") from None
    except (msgspec.DecodeError, RecursionError):
        raise InvalidPush("not a Pub/Sub push body: not JSON") from None
