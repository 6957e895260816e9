"""The error answers routes document: one body, {"status_code": N, "detail": "..."}.

Litestar documents a route's success answer and its 400 on its own; everything else a route
can answer is listed here, so the OpenAPI document names every status a caller can meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import Receive, Scope, Send


def error_response(
    status_code: int, detail: str, headers: dict[str, str] | None = None
) -> Response[dict[str, object]]:
    """An error answer in the one body every route documents (the shape of Litestar's own)."""
    # JSON said outright: a handler that answers HTML (the /schema pages) must not reformat it.
    body = {"status_code": status_code, "detail": detail}
    return Response(body, status_code=status_code, headers=headers, media_type=MediaType.JSON)


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    status_code: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    """error_response() sent from a middleware, which answers before any handler runs."""
    answer = error_response(status_code, detail, headers)
    await answer.to_asgi_response(None, Request(scope))(scope, receive, send)


class ErrorBody(msgspec.Struct, kw_only=True):
    status_code: int
    detail: str
    # Validation errors (400) say which field failed here.
    extra: list[dict[str, Any]] | dict[str, Any] | None = None


_MEANING = {
    401: "Missing or unknown bearer token (see WWW-Authenticate)",
    403: "The token's role may not make this call",
    404: "No live entry under this key: never written, deleted, or expired",
    409: "The stored entry does not decrypt (tampered with, or sealed by a key no longer "
    "configured); write it again",
    413: "The request body is larger than KEYCHAIN_MAX_BODY_BYTES",
    503: "The database is unreachable; retry after Retry-After seconds",
}


def error_responses(
    *status_codes: int, described: Mapping[int, str] | None = None
) -> dict[int, ResponseSpec]:
    """A route's error answers: each status with its usual meaning, or the one `described`
    gives it on this route."""
    meanings = {code: _MEANING[code] for code in status_codes} | dict(described or {})
    return {
        code: ResponseSpec(ErrorBody, description=meaning, generate_examples=False)
        for code, meaning in meanings.items()
    }
