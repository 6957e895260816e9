"""HTTP routes for the auth cache: paths, status codes and operation ids; the service decides."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import Example
from litestar.types import Scope
from litestar.params import Body, PathParameter, QueryParameter
from litestar.openapi.datastructures import ResponseSpec

from app.auth import require_role
from app.errors import InvalidEntry
from app.keychain.schemas import Deleted, Entry, EntryMeta, EntryPage, EntryPut, EntryQuery, ScopeType
from app.keychain.service import KeychainService
from app.openapi import ErrorBody, error_responses
from app.runtime import provide_keychain_service

Service = NamedDependency[KeychainService]
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


AUTH_CACHE_PATH = "/api/auth-cache"


def cache_key_sent(scope: Scope) -> str:
    """The cache key exactly as the caller sent it.

    Routing normalises the path (drops a trailing '/', folds '//'), which would silently file
    the entry under another key; the raw path keeps what was sent, for the service to judge.
    Escapes that do not decode as UTF-8 are refused rather than replaced, so two different
    keys can never land on one entry.
    """
    raw_path = scope.get("raw_path")
    prefix = f"{AUTH_CACHE_PATH}/"
    try:
        if raw_path:
            sent = unquote(raw_path.decode("utf-8"), errors="strict")
            if sent.startswith(prefix):
                return sent[len(prefix) :]
    except UnicodeDecodeError as exc:
        raise InvalidEntry("cache key is not valid UTF-8 once its %-escapes are decoded") from exc
    # No raw path from the server: the :path parameter, which keeps its leading slash.
    routed = scope["path_params"]["cache_key"]
    return routed[1:] if routed.startswith("/") else routed


class _ApiController(Controller):
    """What every /api route shares: the bearer-token guard and the keychain service."""

    guards = [require_role]
    security = [{"bearer": []}]
    dependencies = {"service": Provide(provide_keychain_service, sync_to_thread=False)}


class AuthCacheController(_ApiController):
    path = AUTH_CACHE_PATH
    tags = ["auth-cache"]

    @get(
        "/{cache_key:path}",
        operation_id="getEntry",
        summary="Read an entry (counts a hit)",
        responses=error_responses(401, 404, 409, 503),
    )
    async def get_entry(self, request: Request, service: Service, cache_key: CacheKeyPath) -> Entry:
        return await service.get(cache_key_sent(request.scope))

    @post(
        "/{cache_key:path}",
        operation_id="putEntry",
        summary="Create or replace an entry",
        status_code=201,
        opt={"audit": True},
        responses={
            200: ResponseSpec(EntryMeta, description="An existing entry was replaced"),
            **error_responses(401, 413, 503),
        },
    )
    async def put_entry(
        self,
        request: Request,
        service: Service,
        cache_key: CacheKeyPath,
        data: Annotated[EntryPut, Body(examples=[PUT_EXAMPLE])],
    ) -> Response[EntryMeta]:
        meta, created = await service.put(cache_key_sent(request.scope), data)
        return Response(meta, status_code=201 if created else 200)

    @delete(
        "/{cache_key:path}",
        operation_id="deleteEntry",
        summary="Invalidate an entry",
        opt={"audit": True},
        responses=error_responses(401, 404, 503),
    )
    async def delete_entry(self, request: Request, service: Service, cache_key: CacheKeyPath) -> None:
        await service.delete(cache_key_sent(request.scope))

    @get(
        "/",
        operation_id="listEntries",
        summary="List entries' metadata, never their data (admin)",
        opt={"role": "admin"},
        responses=error_responses(401, 403, 503),
    )
    async def list_entries(
        self,
        service: Service,
        execution_id: Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1)] = None,
        scope_type: Annotated[ScopeType | None, QueryParameter()] = None,
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


class ExecutionController(_ApiController):
    path = "/api/executions"
    tags = ["executions"]

    @delete(
        "/{execution_id:int}/auth-cache",
        operation_id="cleanupExecution",
        summary="Drop every entry of an execution and of its sub-executions (admin)",
        status_code=200,
        opt={"role": "admin", "audit": True},
        responses={
            **error_responses(401, 403, 503),
            404: ResponseSpec(
                ErrorBody,
                description="No such route: execution_id is not a whole number",
                generate_examples=False,
            ),
        },
    )
    async def cleanup_execution(self, service: Service, execution_id: ExecutionIdPath) -> Deleted:
        return Deleted(deleted=await service.cleanup_execution(execution_id))
