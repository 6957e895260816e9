"""HTTP routes for the auth cache: paths, status codes and operation ids; the service decides."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, SerializationException
from litestar.middleware import ASGIMiddleware
from litestar.openapi.spec import Example
from litestar.params import Body, HeaderParameter, PathParameter, QueryParameter
from litestar.serialization import encode_json
from litestar.types import ASGIApp, HTTPResponseStartEvent, Receive, Scope, Send

from app.audit import add_audit_details
from app.auth import RequireRole
from app.db.engine import LazyTransaction
from app.errors import FILL_HEADER, FILL_LEASE_HEADER, InvalidEntry
from app.keychain.paths import AUTH_CACHE_PATH, FILL_LEASE_PATH, cache_key_sent
from app.keychain.schemas import (
    Deleted,
    Entry,
    EntryPage,
    EntryPut,
    EntryQuery,
    EntryWritten,
    ExecutionToken,
    ExecutionTokenRequest,
)
from app.keychain.schemas import (
    ScopeType as EntryScopeType,
)
from app.keychain.service import KeychainService, check_cache_key
from app.openapi import error_responses, send_error
from app.runtime import caller_of, provide_keychain_service, runtime_of

Service = NamedDependency[KeychainService]
FillLeaseHeader = Annotated[
    str | None,
    HeaderParameter(
        name=FILL_LEASE_HEADER, max_length=64, description="The fill lease this write fills, if any"
    ),
]
FILL_DESCRIPTION = (
    "With `fill_wait`, a miss is filled once for the whole cluster. The first caller is answered "
    f"404 with a `{FILL_LEASE_HEADER}` header: it fetches the value from its provider and writes it "
    f"with that header (or gives the lease up with DELETE /api/fill-leases/{{cache_key}}). Other "
    "callers wait on the server, up to `fill_wait` seconds, and are answered 200 as soon as the "
    "value is written; if the lease holder goes away, one of them gets the lease when it runs out. "
    f"A 404 with `{FILL_HEADER}: timed-out` (or `busy`) means: fetch it yourself."
)
# Declared on handlers for the OpenAPI document; handlers read the key with cache_key_sent().
CacheKeyPath = Annotated[str, PathParameter(description="The cache key; may contain '/'")]
ExecutionIdPath = Annotated[int, PathParameter(ge=0, le=2**63 - 1, description="Execution id")]

# A made-up value: OpenAPI examples must never carry a real-looking secret.
PUT_EXAMPLE = Example(
    summary="An OAuth2 token, cached globally for 55 minutes",
    value={
        "token_data": {"access_token": "<access token>", "token_type": "bearer"},
        "credential_type": "oauth2_client_credentials",
        "cache_type": "token",
        "scope_type": "global",
        "credential_name": "test_token",
        "ttl_seconds": "3300",
    },
)


_JSON_KINDS = {
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def json_object_body(
    struct: type[msgspec.Struct],
) -> Callable[[Request[Any, Any, Any]], Awaitable[None]]:
    """A before_request hook for a handler whose body is `struct`.

    Litestar's own words for an empty body, or one that is not an object, are about its
    parameter called `data` ("'data'", "Expected `object`, got `array`"); these say what the
    body must be."""
    required = " and ".join(
        field.encode_name for field in msgspec.structs.fields(struct) if field.required
    )
    expected = f"send a JSON object with {required}"

    async def check(request: Request[Any, Any, Any]) -> None:
        body = (await request.body()).lstrip()
        if not body:
            raise ClientException(f"request body is empty; {expected}")
        if body.startswith(b"{"):
            return  # decoded once, for the handler, by Litestar
        try:
            value: Any = await request.json()  # within the shape caps, as any body
        except SerializationException:
            return  # not JSON at all: Litestar's answer says where it is malformed
        kind = "null" if value is None else _JSON_KINDS[type(value)]
        raise ClientException(f"request body is {kind}; {expected}")

    return check


class _ApiController(Controller):
    """What every /api route shares: bearer-token authentication (RequireRole) and the keychain service."""

    middleware = [RequireRole()]
    security = [{"bearer": []}]
    # The caller is read off the request (caller_of), not injected: two dependencies that do not
    # depend on each other are resolved in an anyio task group, which cost a fifth of a hit.
    dependencies = {"service": Provide(provide_keychain_service)}


class ServeHitsFromMemory(ASGIMiddleware):
    """getEntry's fast lane: a hit that memory alone can serve is answered here, past the
    handler's parameter parsing, dependency and response objects, which were most of a hit's
    cost. Anything else (a miss, a refusal, an error) goes on to the handler, which answers
    the same hit with the same bytes."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        entry = _served_from_memory(scope)
        if entry is None:
            await next_app(scope, receive, send)
            return
        body = encode_json(entry)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 200,
            "headers": _json_headers(len(body)),
        }
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _served_from_memory(scope: Scope) -> Entry | None:
    """The hit, if memory alone can serve it; None leaves the request to the handler."""
    runtime = runtime_of(scope["litestar_app"].state)
    if runtime.process.tier is None:
        return None
    try:
        cache_key = cache_key_sent(scope)
    except InvalidEntry:
        return None  # the handler says what is wrong with the key
    service = runtime.keychain_service(LazyTransaction(runtime.db))
    coordinated = b"fill_wait=" in scope["query_string"]
    return service.get_from_memory(cache_key, scope["state"]["principal"], coordinated)


def _json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


class AuthCacheController(_ApiController):
    path = AUTH_CACHE_PATH
    tags = ["auth-cache"]

    @get(
        "/{cache_key:path}",
        operation_id="getEntry",
        summary="Read an entry (counts a hit)",
        description=FILL_DESCRIPTION,
        middleware=[ServeHitsFromMemory()],
        responses=error_responses(401, 403, 404, 409, 503),
    )
    async def get_entry(
        self,
        request: Request[Any, Any, Any],
        service: Service,
        cache_key: CacheKeyPath,
        fill_wait: Annotated[
            float | None,
            QueryParameter(
                gt=0,
                le=300,
                description="On a miss, coordinate its fill: wait up to this many seconds",
            ),
        ] = None,
    ) -> Entry:
        return await service.get(cache_key_sent(request.scope), caller_of(request), fill_wait)

    @post(
        "/{cache_key:path}",
        operation_id="putEntry",
        summary="Create or replace an entry",
        description="200 whether the write created the entry or replaced one (`created` says which): "
        "existing clients count only a 200 as success.",
        status_code=200,
        opt={"audit": True},
        before_request=json_object_body(EntryPut),
        responses=error_responses(401, 403, 413, 503),
    )
    async def put_entry(
        self,
        request: Request[Any, Any, Any],
        service: Service,
        cache_key: CacheKeyPath,
        data: Annotated[EntryPut, Body(examples=[PUT_EXAMPLE])],
        fill_lease: FillLeaseHeader = None,
    ) -> EntryWritten:
        return await service.put(
            cache_key_sent(request.scope), data, caller_of(request), fill_lease
        )

    @delete(
        "/{cache_key:path}",
        operation_id="deleteEntry",
        summary="Invalidate an entry",
        opt={"audit": True},
        responses=error_responses(401, 403, 404, 503),
    )
    async def delete_entry(
        self, request: Request[Any, Any, Any], service: Service, cache_key: CacheKeyPath
    ) -> None:
        await service.delete(cache_key_sent(request.scope), caller_of(request))


class EmptyKeyIsNoList(ASGIMiddleware):
    """GET /api/auth-cache/ names an entry by an empty key, but routing drops the trailing '/'
    and lands on the list: answered 400, as the entry routes answer a bad key. Before the
    token is checked, as a route that does not exist is: the list's admin role is not what
    such a caller needs to hear about."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if (scope.get("raw_path") or b"").startswith(f"{AUTH_CACHE_PATH}/".encode()):
            try:
                check_cache_key(cache_key_sent(scope))
            except InvalidEntry as refusal:
                await send_error(scope, receive, send, 400, str(refusal))
                return
        await next_app(scope, receive, send)


class AuthCacheListController(_ApiController):
    """The list, apart from the entry routes so that only it pays for EmptyKeyIsNoList."""

    path = AUTH_CACHE_PATH
    tags = ["auth-cache"]
    middleware = [EmptyKeyIsNoList(), RequireRole()]

    @get(
        "/",
        operation_id="listEntries",
        summary="List entries' metadata, never their data (admin)",
        opt={"roles": ()},
        responses=error_responses(401, 403, 503),
    )
    async def list_entries(
        self,
        service: Service,
        execution_id: Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1)] = None,
        scope_type: Annotated[EntryScopeType | None, QueryParameter()] = None,
        credential_name: Annotated[str | None, QueryParameter(max_length=512)] = None,
        include_expired: Annotated[bool, QueryParameter()] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> EntryPage:
        return await service.list_meta(
            EntryQuery(
                execution_id=execution_id,
                scope_type=scope_type,
                credential_name=credential_name,
                include_expired=include_expired,
                limit=limit,
                offset=offset,
            )
        )


class FillLeaseController(_ApiController):
    path = FILL_LEASE_PATH
    tags = ["auth-cache"]

    @delete(
        "/{cache_key:path}",
        operation_id="releaseFillLease",
        summary="Give up a fill lease (the fetch failed): a waiting caller takes it over at once",
        opt={"audit": True},
        responses=error_responses(401, 403, 404, 503),
    )
    async def release_fill_lease(
        self,
        request: Request[Any, Any, Any],
        service: Service,
        cache_key: CacheKeyPath,
        fill_lease: Annotated[str, HeaderParameter(name=FILL_LEASE_HEADER, max_length=64)],
    ) -> None:
        await service.release_fill_lease(cache_key_sent(request.scope, FILL_LEASE_PATH), fill_lease)


class ExecutionController(_ApiController):
    path = "/api/executions"
    tags = ["executions"]

    @delete(
        "/{execution_id:int}/auth-cache",
        operation_id="cleanupExecution",
        summary="Drop every entry of an execution and of its sub-executions, and end its tokens (issuer)",
        status_code=200,
        opt={"roles": ("issuer",), "audit": True},
        responses=error_responses(
            401,
            403,
            503,
            described={404: "No such route: execution_id is not a whole number"},
        ),
    )
    async def cleanup_execution(self, service: Service, execution_id: ExecutionIdPath) -> Deleted:
        return Deleted(deleted=await service.cleanup_execution(execution_id))


class ExecutionTokenController(_ApiController):
    path = "/api/execution-tokens"
    tags = ["executions"]

    @post(
        "/",
        operation_id="mintExecutionToken",
        summary="Mint a token bound to one execution (issuer)",
        description=(
            "The token reads and writes that execution's and its sub-executions' entries, reads "
            "global entries only for the credentials in `read` or `write`, and writes global "
            "entries only for those in `write` (exact names, or prefixes ending in '*'). It stops "
            "working when it expires or when the execution is cleaned up."
        ),
        status_code=201,
        opt={"roles": ("issuer",), "audit": True},
        before_request=json_object_body(ExecutionTokenRequest),
        responses=error_responses(
            401,
            403,
            503,
            described={
                409: "The execution has already ended",
                501: "Execution tokens are not enabled (no signing key)",
            },
        ),
    )
    async def mint_execution_token(
        self,
        request: Request[Any, Any, Any],
        service: Service,
        data: Annotated[ExecutionTokenRequest, Body()],
    ) -> ExecutionToken:
        return await service.mint_execution_token(caller_of(request), data)


class CredentialController(_ApiController):
    path = "/api/credentials"
    tags = ["auth-cache"]

    @delete(
        "/auth-cache",
        operation_id="purgeCredential",
        summary="Drop every entry of a credential name: every execution, every scope or one (admin)",
        description=(
            "For a secret rotated after a leak, say: every replica's memory forgets the entries too. "
            "The name is a query parameter, matched exactly (no prefixes, no patterns)."
        ),
        status_code=200,
        opt={"roles": (), "audit": True},
        responses=error_responses(401, 403, 503),
    )
    async def purge_credential(
        self,
        request: Request[Any, Any, Any],
        service: Service,
        credential_name: Annotated[str, QueryParameter(min_length=1, max_length=512)],
        scope_type: Annotated[EntryScopeType | None, QueryParameter()] = None,
    ) -> Deleted:
        add_audit_details(request.scope, credential_name=credential_name, scope_type=scope_type)
        deleted = await service.purge([credential_name], scope_type=scope_type)
        add_audit_details(request.scope, deleted=deleted)
        return Deleted(deleted=deleted)
