"""KeychainClient: the one way a worker talks to the Keychain server.

Every call goes through `_request()`, which owns authentication, retries and the mapping of
HTTP statuses to exceptions. Retries cover what a retry can fix (no connection, 429, 503), are
bounded, back off with jitter and never come sooner than the server's Retry-After.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import functools
import logging
import os
import random
import ssl
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import msgspec

from workerlib._loop import LoopBinding
from workerlib.errors import (
    BadRequest,
    ExecutionEnded,
    Forbidden,
    InvalidKey,
    KeychainAPIError,
    KeychainConfigError,
    KeychainError,
    KeychainUnavailable,
    NotEnabled,
    NotFound,
    RateLimited,
    Unauthorized,
    UnreadableEntry,
)
from workerlib.models import (
    Deleted,
    Entry,
    EntryMeta,
    EntryPage,
    EntryPut,
    ExecutionToken,
    ExecutionTokenRequest,
    FillLease,
)
from workerlib.providers import ConfiguredProvider, SecretProvider

log = logging.getLogger(__name__)

DEFAULT_SERVER_URL = "http://localhost:8082"
SERVER_URL_ENV = "KEYCHAIN_SERVER_URL"
API_TOKEN_ENV = "KEYCHAIN_API_TOKEN"
CA_FILE_ENV = "KEYCHAIN_CA_FILE"
FILL_WAIT_ENV = "KEYCHAIN_FILL_WAIT_SECONDS"
FILL_LEASE_HEADER = "Keychain-Fill-Lease"
# How long a reader waits on the server for another caller's fill of a miss: longer than a
# provider call (Secret Manager: 200-300 ms) plus the server's lease (5 s), so a holder that
# dies is replaced before anyone gives up.
DEFAULT_FILL_WAIT_SECONDS = 10.0

T = TypeVar("T")

_STATUS_ERRORS: dict[int, type[KeychainAPIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: UnreadableEntry,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
    501: NotEnabled,
}
_RETRY_STATUSES = frozenset({429, 503})
# The request may not have reached the server, or the pooled connection died under it.
# A read timeout is not retried: the server is there but slow, and more load will not help.
_RETRY_TRANSPORT_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


def encode_key(cache_key: str) -> str:
    """Percent-encode a cache key for the URL path.

    '/' and ':' stay readable (Secret Manager paths, `name:execution_id`); everything else
    that is not unreserved is escaped, so '?', '#', '%', spaces and non-ASCII survive.
    Dot segments would be collapsed by URL normalisation, so their dots are escaped too.
    The server's router drops a leading or trailing '/' and merges '//', so such keys
    would silently land on another key: they are refused here instead.
    """
    if not cache_key:
        raise InvalidKey("cache key is empty")
    if cache_key.startswith("/") or cache_key.endswith("/") or "//" in cache_key:
        raise InvalidKey(
            "cache key may not start or end with '/' or contain '//' "
            "(the server's URL routing would store it under a different key)"
        )
    encoded = quote(cache_key, safe="/:")
    if "." in cache_key:
        segments = encoded.split("/")
        encoded = "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in segments)
    return encoded


def entry_path(cache_key: str) -> str:
    """The API path of the entry under `cache_key` (see encode_key)."""
    return f"/api/auth-cache/{encode_key(cache_key)}"


def display_url(url: str) -> str:
    """scheme://host[:port]/path of `url`, for messages and logs: user:password@, a query and a
    fragment may all hold credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _checked_base_url(url: str, setting: str) -> str:
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        # Not quoted: a value this far off might be something else pasted in, a token even.
        raise KeychainConfigError(
            f"{setting} must be an http:// or https:// URL with a host, such as {DEFAULT_SERVER_URL} "
            "(the value given is not, and is not repeated here)"
        )
    if "@" in parts.netloc or "?" in url or "#" in url or not url.isprintable():
        raise KeychainConfigError(
            f"{setting} ({display_url(url)}) may hold only scheme, host, port and path: no user:password@, "
            f"query, fragment or control characters (the token goes in {API_TOKEN_ENV})"
        )
    return url


def _checked_token(token: str | None, setting: str) -> str | None:
    # A token mounted from a file ends in a newline that is not part of it.
    token = (token or "").strip()
    if not token:
        return None
    if not (token.isascii() and token.isprintable()):
        raise KeychainConfigError(
            f"{setting} holds non-ASCII or control characters; a bearer token is printable ASCII "
            "(its value is not shown)"
        )
    return token


def _fill_wait(fill_wait: float | None, environ: Mapping[str, str]) -> float:
    if fill_wait is not None:
        return max(0.0, fill_wait)
    value = environ.get(FILL_WAIT_ENV)
    if not value:
        return DEFAULT_FILL_WAIT_SECONDS
    try:
        return max(0.0, float(value))
    except ValueError:
        raise KeychainConfigError(
            f"{FILL_WAIT_ENV} must be a number of seconds, such as 10"
        ) from None


@functools.cache
def _default_tls_context() -> ssl.SSLContext:
    """httpx's context for verify=True, made once per process: loading the CA bundle costs about
    30 ms, paid by every client made (CredentialCache makes one per call). A context serves any
    number of connections, on any loop or thread."""
    return httpx.create_ssl_context()


def _tls_verify(
    verify: bool | str | ssl.SSLContext | None, environ: Mapping[str, str]
) -> bool | ssl.SSLContext:
    setting = "verify"
    if verify is None:
        verify, setting = environ.get(CA_FILE_ENV) or True, CA_FILE_ENV
    if verify is True:
        return _default_tls_context()
    if not isinstance(verify, str):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise KeychainConfigError(
            f"{setting} names {verify!r}, which is not a readable PEM file of CA certificates ({type(exc).__name__})"
        ) from None


def _certificate_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(response: httpx.Response) -> str:
    """The server's `detail`, plus validation specifics when Litestar gives them."""
    fallback = response.reason_phrase or f"HTTP {response.status_code}"
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the stack allows
        return fallback
    if not isinstance(body, dict):
        return fallback
    detail = str(body.get("detail") or fallback)
    extra = body.get("extra")
    if isinstance(extra, list):
        # Litestar's validation errors: [{"message": ..., "key": ..., "source": ...}]; values
        # are never echoed, so these are safe to show.
        parts = [
            f"{item.get('key')}: {item.get('message')}"
            if item.get("key")
            else str(item.get("message"))
            for item in extra
            if isinstance(item, dict) and item.get("message")
        ]
        if parts:
            detail = f"{detail} ({'; '.join(parts)})"
    return detail


class KeychainClient:
    """Async client for the Keychain HTTP API; one pooled connection set for its whole life.

    Use it as `async with KeychainClient() as keychain:` (or call close()), on one event loop:
    the first one it is used on. Another loop's call raises WrongEventLoop, as its pool cannot
    serve there. A worker that runs each task in its own asyncio.run() makes one per task.

    base_url and token default to KEYCHAIN_SERVER_URL (else http://localhost:8082) and
    KEYCHAIN_API_TOKEN; either one unusable is a KeychainConfigError here, not a failure at the
    first request. TLS is verified: `verify` is a CA bundle file, an SSLContext, or a bool;
    None means the file in KEYCHAIN_CA_FILE when set, else the system's CAs. Pass
    `http_client` to share a pool (or to reach an in-process app); its TLS settings are its own,
    and the client closes only the httpx client it made itself. `fill_wait` (default
    KEYCHAIN_FILL_WAIT_SECONDS, else 10; 0 turns it off) is how long get_or_fill() lets the
    server hold a read for another caller's fill.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 0.5,
        retries: int = 2,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        max_retry_after: float = 2.0,
        http_client: httpx.AsyncClient | None = None,
        verify: bool | str | ssl.SSLContext | None = None,
        fill_wait: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.fill_wait = _fill_wait(fill_wait, environ)
        if base_url:
            self.base_url = _checked_base_url(base_url, "base_url")
        else:
            self.base_url = _checked_base_url(
                environ.get(SERVER_URL_ENV) or DEFAULT_SERVER_URL, SERVER_URL_ENV
            )
        if token is not None:
            self._token = _checked_token(token, "token")
        else:
            self._token = _checked_token(environ.get(API_TOKEN_ENV), API_TOKEN_ENV)
        if http_client is not None and verify is not None:
            raise KeychainConfigError(
                "verify applies to the httpx client KeychainClient makes, not to http_client"
            )
        # A server that is gone without refusing (node down, pod moved, packets dropped by a
        # firewall) leaves a connect hanging. Connecting within the cluster takes milliseconds,
        # so a connect gets 0.5 s, not the whole timeout: with the retries, fetch_secret falls
        # back to the provider after ~1.5 s instead of ~15 s. Reads keep the full timeout.
        # Given with every request, so they hold for an injected http_client too.
        self._timeouts = httpx.Timeout(timeout, connect=connect_timeout)
        self._read_timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        # A Retry-After longer than this is not waited for: the call fails now (and
        # fetch_secret degrades) rather than stalling a workflow step. The server sends
        # Retry-After: 1 with its 503s, so the default rides out a short database blip
        # (up to `retries` waits of a second) before degrading; keep it above 1.
        self.max_retry_after = max_retry_after
        self._owns_http = http_client is None
        self._provider = ConfiguredProvider()  # shared by with_token() copies, like the pool
        # Work that goes on using this client after its caller returned (a refresh ahead, a load
        # every waiter gave up on): close() lets it finish first. Shared by the copies too.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._is_copy = False
        # Shared by the copies with_token() makes, as they share the pool.
        self._binding = LoopBinding(
            "this KeychainClient was first used on another event loop, and its connections "
            "belong to that loop: make a KeychainClient per loop (per asyncio.run, per "
            "thread), inside `async with KeychainClient() as keychain:`"
        )
        self._http = http_client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
            verify=_tls_verify(verify, environ),
        )

    def __repr__(self) -> str:
        # Never show the token.
        return (
            f"KeychainClient(base_url={self.base_url!r}, token={'set' if self._token else 'unset'})"
        )

    async def __aenter__(self) -> KeychainClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Let this client's background work finish (for at most its timeout; then it is
        cancelled), then close the pool, if this client made it (not an injected http_client,
        not a with_token() copy's), and the configured secret provider. A copy's close() does
        nothing. Raises nothing of its own."""
        if self._is_copy:
            return
        try:
            if self._tasks:
                _, unfinished = await asyncio.wait(self._tasks, timeout=self._read_timeout)
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
            if self._owns_http:
                await self._http.aclose()
        finally:
            await self._provider.close()

    def _start_task(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `work`, which uses this client, as a task that close() waits for."""
        self._binding.check()
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def configured_provider(self) -> SecretProvider:
        """The secret provider the operator configured (KEYCHAIN_SECRET_PROVIDER): what
        fetch_secret, resolve_auth and warm_execution read a miss from when given none. Made at
        the first call, closed with this client. Raises SecretError for an unknown provider."""
        return self._provider.get()

    def with_token(self, token: str) -> KeychainClient:
        """This client for another token (an execution's), sharing this one's pool, settings and
        event loop. The pool stays this client's: close this one, not the copy. Raises
        KeychainConfigError for a token that is not printable ASCII."""
        other = copy.copy(self)
        other._token = _checked_token(token, "token")
        other._owns_http = False
        other._is_copy = True
        return other

    # -- the API ---------------------------------------------------------------------------
    # Every call below may raise, besides what its docstring names: KeychainUnavailable (no
    # answer, or a 5xx, after the retries), TokenRefused (401 Unauthorized, 403 Forbidden),
    # BadRequest (400, 413), RateLimited (429 after the retries), InvalidKey (a key that cannot
    # be sent unchanged), KeychainError (an answer that does not decode), and WrongEventLoop.

    async def get(self, cache_key: str) -> Entry | None:
        """The live entry under `cache_key` (the server counts the hit), or None on a miss.
        Raises UnreadableEntry when the server can no longer open it (write it again)."""
        try:
            response = await self._request("GET", entry_path(cache_key))
        except NotFound:
            return None
        return self._decode(response, Entry)

    async def get_or_fill(self, cache_key: str) -> Entry | FillLease | None:
        """The live entry under `cache_key`, with a miss filled once for the whole cluster.

        Returns the Entry (at once, or as soon as another caller's fill lands, within
        `fill_wait`); a FillLease when this caller is the one to fetch the value (then put() it
        with fill_lease=, or release_fill_lease() if the fetch fails); None when the wait ran out
        or the server would not hold the read: fetch it yourself. Raises what get() raises."""
        if not self.fill_wait:
            return await self.get(cache_key)
        try:
            response = await self._request(
                "GET",
                entry_path(cache_key),
                params={"fill_wait": self.fill_wait},
                read_timeout=self.fill_wait + self._read_timeout,
            )
        except NotFound as miss:
            lease_id = miss.headers.get(FILL_LEASE_HEADER.lower())
            return FillLease(cache_key=cache_key, lease_id=lease_id) if lease_id else None
        return self._decode(response, Entry)

    async def release_fill_lease(self, lease: FillLease) -> bool:
        """Give up a lease whose fetch failed, so that a waiting caller takes it over now rather
        than when it runs out. True when released, False when it had already ended; raises only
        what every call raises (listed above get())."""
        try:
            await self._request(
                "DELETE",
                f"/api/fill-leases/{encode_key(lease.cache_key)}",
                headers={FILL_LEASE_HEADER: lease.lease_id},
            )
        except NotFound:
            return False
        return True

    async def put(
        self,
        cache_key: str,
        token_data: Mapping[str, Any],
        *,
        credential_type: str,
        cache_type: str = "secret",
        scope_type: str | None = None,
        execution_id: int | None = None,
        parent_execution_id: int | None = None,
        credential_name: str | None = None,
        ttl_seconds: int | str | None = None,
        expires_at: datetime | None = None,
        fill_lease: FillLease | None = None,
    ) -> EntryMeta:
        """Create or replace an entry; the answer is its metadata (the payload is not echoed).
        With `fill_lease`, the write fills that lease: the callers waiting for it get this value.
        Raises Forbidden when the token may not write it (another execution's entry, or a shared
        one another principal wrote, without a write grant)."""
        body = EntryPut(
            token_data=dict(token_data),
            credential_type=credential_type,
            cache_type=cache_type,
            scope_type=scope_type,
            execution_id=execution_id,
            parent_execution_id=parent_execution_id,
            credential_name=credential_name,
            ttl_seconds=ttl_seconds,
            expires_at=expires_at,
        )
        headers = {FILL_LEASE_HEADER: fill_lease.lease_id} if fill_lease is not None else None
        response = await self._request(
            "POST", entry_path(cache_key), content=msgspec.json.encode(body), headers=headers
        )
        return self._decode(response, EntryMeta)

    async def delete(self, cache_key: str) -> bool:
        """True when an entry was deleted, False when there was none. Raises Forbidden for a
        shared entry another principal wrote, without a write grant for it."""
        try:
            await self._request("DELETE", entry_path(cache_key))
        except NotFound:
            return False
        return True

    async def cleanup_execution(self, execution_id: int) -> int:
        """Drop an execution's entries and its sub-executions', and end its execution tokens;
        returns how many entries went. Raises Forbidden without an issuer (or admin) token."""
        response = await self._request("DELETE", f"/api/executions/{int(execution_id)}/auth-cache")
        return self._decode(response, Deleted).deleted

    async def mint_execution_token(
        self,
        execution_id: int,
        *,
        parent_execution_id: int | None = None,
        read: Sequence[str] = (),
        write: Sequence[str] = (),
        ttl_seconds: int | None = None,
    ) -> ExecutionToken:
        """A token bound to one execution (needs an issuer token): the engine asks for one as an
        execution starts, and its workers use it with `with_token()`. It reaches the execution's
        and its sub-executions' entries, global entries only for the credentials in `read` (or
        `write`, which may also write them), and ends with the execution's cleanup. Raises
        Forbidden without an issuer token, ExecutionEnded for an execution (or parent) already
        cleaned up, NotEnabled when the server has no signing key (KEYCHAIN_TOKEN_SIGNING_KEYS)."""
        body = ExecutionTokenRequest(
            execution_id=execution_id,
            parent_execution_id=parent_execution_id,
            read=list(read),
            write=list(write),
            ttl_seconds=ttl_seconds,
        )
        response = await self._request(
            "POST",
            "/api/execution-tokens",
            content=msgspec.json.encode(body),
            errors={409: ExecutionEnded},
        )
        return self._decode(response, ExecutionToken)

    async def list_entries(
        self,
        *,
        execution_id: int | None = None,
        scope_type: str | None = None,
        credential_name: str | None = None,
        include_expired: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> EntryPage:
        """A page of entries' metadata, never their data; listing does not count as a hit.
        Raises Forbidden without an admin token."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if execution_id is not None:
            params["execution_id"] = execution_id
        if scope_type is not None:
            params["scope_type"] = scope_type
        if credential_name is not None:
            params["credential_name"] = credential_name
        if include_expired:
            params["include_expired"] = "true"
        response = await self._request("GET", "/api/auth-cache", params=params)
        return self._decode(response, EntryPage)

    # -- the choke point ---------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
        errors: Mapping[int, type[KeychainAPIError]] | None = None,
    ) -> httpx.Response:
        """The answer to a 2xx or 3xx; any other status raises, through `errors` (this call's own
        meaning of a status) or else the table above."""
        self._binding.check()
        url = f"{self.base_url}{path}"
        timeouts = (
            self._timeouts
            if read_timeout is None
            else httpx.Timeout(read_timeout, connect=self._timeouts.connect)
        )
        headers = {"Accept": "application/json", **(headers or {})}
        if content is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, url, content=content, params=params, headers=headers, timeout=timeouts
                )
            except _RETRY_TRANSPORT_ERRORS as exc:
                if _certificate_failure(exc):
                    # Not the network: retrying cannot help, and the fix is a setting.
                    raise KeychainUnavailable(
                        f"the TLS certificate of the keychain server at {self.base_url} did not verify; "
                        f"trust its CA with {CA_FILE_ENV} or KeychainClient(verify=...)"
                    ) from exc
                if attempt < self.retries:
                    await self._sleep(attempt, None, method, path, type(exc).__name__)
                    attempt += 1
                    continue
                raise KeychainUnavailable(
                    f"cannot reach the keychain server at {self.base_url} "
                    f"({type(exc).__name__}, {attempt + 1} attempts)"
                ) from exc
            except httpx.TimeoutException as exc:
                raise KeychainUnavailable(
                    f"the keychain server at {self.base_url} did not answer {method} in time "
                    f"({type(exc).__name__})"
                ) from exc
            except httpx.HTTPError as exc:
                raise KeychainUnavailable(
                    f"talking to the keychain server at {self.base_url} failed ({type(exc).__name__})"
                ) from exc

            status = response.status_code
            if status < 400:
                return response
            if status in _RETRY_STATUSES and attempt < self.retries:
                wait = _retry_after_seconds(response.headers.get("Retry-After"))
                if wait is None or wait <= self.max_retry_after:
                    await self._sleep(attempt, wait, method, path, f"HTTP {status}")
                    attempt += 1
                    continue
            detail = _detail(response)
            error = (errors or {}).get(status) or _STATUS_ERRORS.get(status)
            if error is None and status >= 500:
                raise KeychainUnavailable(
                    f"keychain answered {status} on {method} {path}: {detail}", status_code=status
                )
            raise (error or KeychainAPIError)(
                status, detail, method=method, path=path, headers=dict(response.headers)
            )

    async def _sleep(
        self, attempt: int, retry_after: float | None, method: str, path: str, reason: str
    ) -> None:
        # Full jitter under a capped exponential, but never sooner than the server asked.
        delay = random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
        if retry_after is not None:
            delay = max(delay, retry_after)
        log.info(
            "keychain request retried",
            extra={
                "method": method,
                "path": path,
                "reason": reason,
                "attempt": attempt + 1,
                "delay_s": round(delay, 3),
            },
        )
        await asyncio.sleep(delay)

    @staticmethod
    def _decode(response: httpx.Response, type_: type[T]) -> T:
        # A KeychainError whatever is wrong with the answer, so callers that can do without the
        # cache degrade; a payload nested deeper than the stack allows is a RecursionError.
        try:
            return msgspec.json.decode(response.content, type=type_)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise KeychainError(
                f"unexpected answer from the keychain server to {response.request.method} "
                f"{response.request.url.path}: {exc}"
            ) from exc
