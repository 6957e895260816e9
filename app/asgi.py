"""create_app(): the one place that wires routes, dependencies, error mapping, OpenAPI and lifespans."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import swagger_ui_bundle
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.exceptions import ClientException, HTTPException, NotFoundException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from litestar.status_codes import (
    HTTP_404_NOT_FOUND,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_500_INTERNAL_SERVER_ERROR,
)

from app.audit import AuditMiddleware, ReadAudit, run_read_audit_flusher
from app.auth import WWW_AUTHENTICATE, ExecutionTokens, TokenTable
from app.crypto import KeyRing
from app.db.engine import Database, check_pooler_settings, direct_database_url, make_engine
from app.db.tables import schema_of
from app.errors import (
    RETRY_AFTER_SECONDS,
    AccessDenied,
    ConfigurationError,
    DatabaseUnavailable,
    EntryNotFound,
    ExecutionEnded,
    FeatureDisabled,
    InvalidEntry,
    KeychainError,
    TokenRevoked,
    Unauthenticated,
    UnreadableEntry,
    VerificationUnavailable,
)
from app.events.controller import SecretManagerEventController
from app.events.oidc import make_push_verifier
from app.invalidation import InvalidationListener, channel_name
from app.json_shape import shape_problem
from app.keychain.controller import (
    AuthCacheController,
    AuthCacheListController,
    CredentialController,
    ExecutionController,
    ExecutionTokenController,
    FillLeaseController,
)
from app.keychain.fills import FillWaits
from app.keychain.hits import run_hit_flusher
from app.keychain.service import EntryLimits, ProcessState
from app.keychain.sweeper import run_sweeper
from app.keychain.tier import MemoryTier
from app.logs import RequestIdMiddleware
from app.metrics import RequestMetricsMiddleware
from app.openapi import error_response
from app.runtime import Runtime
from app.settings import Settings, load_settings
from app.system.controller import SystemController

log = logging.getLogger(__name__)

SWAGGER_ASSETS = "/static/swagger-ui"

# Each domain error is one HTTP answer; anything unmapped is a 500 and a bug.
_ERROR_STATUS: dict[type[KeychainError], int] = {
    InvalidEntry: 400,
    TokenRevoked: 401,
    Unauthenticated: 401,
    AccessDenied: 403,
    EntryNotFound: 404,
    UnreadableEntry: 409,
    ExecutionEnded: 409,
    FeatureDisabled: 501,
    DatabaseUnavailable: 503,
    VerificationUnavailable: 503,
}
_ERROR_HEADERS = {401: WWW_AUTHENTICATE, 503: {"Retry-After": RETRY_AFTER_SECONDS}}


def _error_response(
    request: Request[Any, Any, Any], exc: KeychainError
) -> Response[dict[str, object]]:
    status = next(_ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in _ERROR_STATUS)
    headers = {**_ERROR_HEADERS.get(status, {}), **exc.headers}
    return error_response(status, str(exc), headers or None)


def _body_too_large(
    request: Request[Any, Any, Any], exc: HTTPException
) -> Response[dict[str, object]]:
    # Litestar's own detail is a bare "Request Entity Too Large"; say the limit and its setting.
    limit = request.route_handler.resolve_request_max_body_size()
    # A route with a limit of its own (Pub/Sub pushes) is not governed by the setting.
    setting = (
        " (KEYCHAIN_MAX_BODY_BYTES)"
        if limit == request.app.state.runtime.settings.max_body_bytes
        else ""
    )
    detail = f"request body is larger than {limit} bytes{setting}"
    return error_response(413, detail)


NO_SUCH_ROUTE = (
    "no such route; every route is listed at /schema/openapi.json (Swagger UI at /schema)"
)


def _not_found(
    request: Request[Any, Any, Any], exc: NotFoundException
) -> Response[dict[str, object]]:
    # Routing's own 404 says only "Not Found"; a route's (events not enabled) says why. An
    # absent entry is EntryNotFound, answered by _error_response.
    detail = exc.detail if exc.detail != HTTPStatus(HTTP_404_NOT_FOUND).phrase else NO_SUCH_ROUTE
    return error_response(HTTP_404_NOT_FOUND, detail)


def _schema_page_not_found(response: Response[Any]) -> Response[Any]:
    """Litestar answers an unknown /schema/... page with an HTML 404 of its own (not an
    exception): answered like every other 404 instead."""
    if response.status_code == HTTP_404_NOT_FOUND:
        return error_response(HTTP_404_NOT_FOUND, NO_SUCH_ROUTE)
    return response


def _unexpected_error(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[dict[str, object]]:
    # A bug: log it with its traceback (messages never hold secrets: the engine hides
    # statement parameters), answer without details.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; see the server log")


class _Request(Request[Any, Any, Any]):
    async def json(self) -> Any:
        settings: Settings = self.app.state.runtime.settings
        problem = shape_problem(
            await self.body(), settings.max_token_data_depth, settings.max_token_data_items
        )
        if problem is not None:
            raise ClientException(problem)
        # msgspec decodes nested arrays and objects recursively; should the depth cap be set
        # past the interpreter's recursion limit, that is still the caller's mistake.
        try:
            return await super().json()
        except RecursionError as exc:
            raise ClientException("request body nests JSON arrays or objects too deeply") from exc


def _openapi_config() -> OpenAPIConfig:
    # Served from the installed swagger-ui-bundle-v2 package: no CDN, works offline.
    swagger = SwaggerRenderPlugin(
        js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
        css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{SWAGGER_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_ASSETS}/favicon-32x32.png'>",
    )
    return OpenAPIConfig(
        title="Keychain",
        version="0.1.0",
        description="Encrypted credential and token cache for workflow workers.",
        openapi_router=Router(
            "/schema",
            route_handlers=[],
            include_in_schema=False,
            after_request=_schema_page_not_found,
        ),
        render_plugins=[swagger],
        # Declared so the UI's "Authorize" button sends the bearer token.
        components=Components(
            security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
        ),
    )


def make_keyring(settings: Settings) -> KeyRing:
    if settings.encryption_keys:
        return KeyRing.parse(settings.encryption_keys)
    if settings.database_url is not None:
        # A generated key lives in one pod's data directory: other replicas, and this one
        # after a restart, could not open what it sealed.
        raise ConfigurationError(
            "KEYCHAIN_ENCRYPTION_KEYS is required with KEYCHAIN_DATABASE_URL: every replica "
            "must seal with the same keys (a key is generated only for the embedded database)"
        )
    return KeyRing.load_or_create_local(settings.data_dir)


def make_execution_tokens(settings: Settings) -> ExecutionTokens | None:
    # Local mode generates a signing key, as it does an encryption key; a shared database
    # needs KEYCHAIN_TOKEN_SIGNING_KEYS.
    local_dir = settings.data_dir if settings.database_url is None else None
    return ExecutionTokens.configured(
        settings.token_signing_keys, local_dir, settings.execution_token_ttl_seconds
    )


def make_token_table(settings: Settings) -> TokenTable:
    tokens = TokenTable.parse(settings.api_tokens, settings.api_token_limits)
    if tokens.is_open:
        if settings.database_url is not None and not settings.allow_open_api:
            raise ConfigurationError(
                "KEYCHAIN_API_TOKENS is required with KEYCHAIN_DATABASE_URL "
                "(name:role:token,...); set KEYCHAIN_ALLOW_OPEN_API=true only for development"
            )
        log.warning(
            "NO API TOKENS CONFIGURED: the Keychain API is open to anyone who can reach it. "
            "Set KEYCHAIN_API_TOKENS for anything but local development."
        )
    return tokens


@contextlib.asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    runtime: Runtime = app.state.runtime
    owns_database = runtime.database is None
    if owns_database:
        runtime.database = Database(make_engine(runtime.settings))
    database = runtime.db
    # Background work that lives as long as the app: started here, stopped in reverse.
    tasks: list[asyncio.Task[None]] = []
    if runtime.settings.sweep_interval_seconds > 0:
        sweeping = run_sweeper(
            database,
            runtime.settings.sweep_interval_seconds,
            runtime.settings.sweep_batch_size,
            runtime.metrics,
            ended_retention_seconds=runtime.settings.execution_token_ttl_seconds,
        )
        tasks.append(asyncio.create_task(sweeping, name="keychain-sweeper"))
    process = runtime.process
    tier = process.tier
    # Straight to PostgreSQL when a transaction pooler stands in front of it: LISTEN holds a session.
    listen_url = (
        direct_database_url(runtime.settings)
        if runtime.settings.direct_database_url
        else database.engine.url
    )
    listener = InvalidationListener(
        listen_url, channel_name(schema_of(database.engine)), process.on_invalidation
    )
    process.ended_executions.listener = listener
    if tier is not None:
        tier.listener = listener
    tasks.append(asyncio.create_task(listener.run(), name="keychain-invalidation-listener"))
    counting = run_hit_flusher(process.hits, database, runtime.settings.hit_flush_seconds)
    tasks.append(asyncio.create_task(counting, name="keychain-hit-flusher"))
    if process.read_audit is not None:
        flushing = run_read_audit_flusher(process.read_audit, runtime.settings.audit_flush_seconds)
        tasks.append(asyncio.create_task(flushing, name="keychain-read-audit"))
    try:
        yield
    finally:
        # The server takes no new requests by now; those it took are answered first.
        if not await runtime.metrics.drained(runtime.settings.drain_seconds):
            log.warning(
                "shutting down with %d requests still in flight after %.0f s (KEYCHAIN_DRAIN_SECONDS)",
                runtime.metrics.in_flight,
                runtime.settings.drain_seconds,
            )
        process.ended_executions.listener = None
        if tier is not None:
            tier.listener = None
        for task in reversed(tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if owns_database:
            await database.dispose()
            runtime.database = None


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> Litestar:
    """Build the app. Tests pass their own settings and a Database bound to a test transaction."""
    settings = settings or load_settings()
    check_pooler_settings(settings)
    tokens = make_token_table(settings)
    execution_tokens = make_execution_tokens(settings)
    if execution_tokens is None and tokens.has_role("issuer"):
        raise ConfigurationError(
            "an issuer token is configured but KEYCHAIN_TOKEN_SIGNING_KEYS is not: set it "
            "(id:<base64 of 32 random bytes>) so that execution tokens can be signed"
        )
    runtime = Runtime(
        settings=settings,
        keyring=make_keyring(settings),
        tokens=tokens,
        limits=EntryLimits(
            settings.default_ttl_seconds, settings.max_ttl_seconds, settings.max_token_data_bytes
        ),
        process=ProcessState(
            read_audit=ReadAudit() if settings.audit_reads else None,
            execution_tokens=execution_tokens,
            tier=(
                MemoryTier(settings.memory_tier_max_entries, settings.memory_tier_max_bytes)
                if settings.memory_tier_max_entries > 0
                else None
            ),
            serve_from_memory_during_outage=settings.serve_from_memory_during_outage,
            log_reads=settings.log_reads,
            fills=FillWaits.configured(settings),
        ),
        push_verifier=make_push_verifier(settings),
        database=database,
    )
    return Litestar(
        route_handlers=[
            AuthCacheController,
            AuthCacheListController,
            FillLeaseController,
            ExecutionController,
            ExecutionTokenController,
            CredentialController,
            SecretManagerEventController,
            SystemController,
            create_static_files_router(
                path=SWAGGER_ASSETS,
                directories=[swagger_ui_bundle.swagger_ui_path],
                include_in_schema=False,
            ),
        ],
        exception_handlers={
            **{cls: _error_response for cls in _ERROR_STATUS},
            NotFoundException: _not_found,
            HTTP_413_REQUEST_ENTITY_TOO_LARGE: _body_too_large,
            HTTP_500_INTERNAL_SERVER_ERROR: _unexpected_error,
        },
        openapi_config=_openapi_config(),
        lifespan=[_lifespan],
        # Outermost first: the request id is set before anything logs, and the latency
        # includes the audit event.
        middleware=[
            RequestIdMiddleware,
            DefineMiddleware(RequestMetricsMiddleware, metrics=runtime.metrics),
            AuditMiddleware(),
        ],
        state=State({"runtime": runtime}),
        logging_config=None,  # app.logs configures logging once per process
        request_max_body_size=settings.max_body_bytes,
        request_class=_Request,
    )
