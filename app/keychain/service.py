"""The rules of the cache: key syntax, TTL, scopes, encryption, access control and tracking."""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import msgspec

from app.audit import ReadAudit
from app.auth import ExecutionTokens, Grants, Principal, check_patterns
from app.crypto import KeyRing, bound_data, new_write_id
from app.errors import (
    FILL_HEADER,
    ConfigurationError,
    DatabaseUnavailable,
    EntryNotFound,
    ExecutionEnded,
    FeatureDisabled,
    FillLeaseGranted,
    InvalidEntry,
    TokenRevoked,
    UnreadableEntry,
)
from app.invalidation import Invalidation, key_messages
from app.keychain import access
from app.keychain.ended import EndedExecutions
from app.keychain.fills import FillWaits
from app.keychain.hits import HitCounter
from app.keychain.repository import KeychainRepository, columns
from app.keychain.schemas import (
    Entry,
    EntryMeta,
    EntryPage,
    EntryPut,
    EntryQuery,
    EntryWritten,
    ExecutionToken,
    ExecutionTokenRequest,
)
from app.keychain.tier import CachedEntry, MemoryTier
from app.metrics import KeychainMetrics
from app.settings import Settings

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 512
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WHOLE_NUMBER = re.compile(r"^\s*[+-]?\d{1,12}\s*$")


@dataclass(frozen=True)
class EntryLimits:
    default_ttl_seconds: int
    max_ttl_seconds: int
    max_token_data_bytes: int


def check_name(value: str, field: str) -> str:
    # Keys and names alike: PostgreSQL text cannot hold NUL, logs should hold no controls.
    if _CONTROL_CHARACTERS.search(value):
        raise InvalidEntry(f"{field} contains control characters")
    return value


def check_cache_key(cache_key: str) -> str:
    if not cache_key:
        raise InvalidEntry("cache key is empty")
    if len(cache_key) > MAX_KEY_LENGTH:
        raise InvalidEntry(
            f"cache key is {len(cache_key)} characters long; the limit is {MAX_KEY_LENGTH}"
        )
    check_name(cache_key, "cache key")
    if cache_key.startswith("/") or cache_key.endswith("/") or "//" in cache_key:
        # URL routing folds these, so such a key could never be read back as written.
        raise InvalidEntry("cache key must not start or end with '/' or contain '//'")
    return cache_key


def _whole_seconds(value: int | str) -> int:
    if isinstance(value, str):
        if not _WHOLE_NUMBER.match(value):
            # Not echoed: a mis-rendered template could have put a token here.
            raise InvalidEntry(
                'ttl_seconds must be a whole number of seconds, such as 3600 or "3600"'
            )
        value = int(value)
    return value


@dataclass
class ProcessState:
    """What every request of one server process shares; scripts and unit tests get a fresh
    one, with no memory tier, so every read goes to the database."""

    metrics: KeychainMetrics = field(default_factory=KeychainMetrics)
    read_audit: ReadAudit | None = None
    execution_tokens: ExecutionTokens | None = None
    ended_executions: EndedExecutions = field(default_factory=EndedExecutions)
    tier: MemoryTier | None = None
    hits: HitCounter = field(default_factory=HitCounter)
    fills: FillWaits = field(default_factory=lambda: FillWaits.configured(Settings()))
    # While PostgreSQL is unreachable nothing can change anywhere: keep serving what memory holds.
    serve_from_memory_during_outage: bool = True
    # The INFO line per hit and miss.
    log_reads: bool = True

    def on_invalidation(self, message: Invalidation) -> None:
        """A change announced by any replica, this one included."""
        self.ended_executions.on_invalidation(message)
        self.fills.on_invalidation(message)
        if self.tier is not None:
            self.tier.on_invalidation(message)


class KeychainService:
    def __init__(
        self,
        repository: KeychainRepository,
        keyring: KeyRing,
        limits: EntryLimits,
        process: ProcessState | None = None,
    ) -> None:
        self.repository = repository
        self.keyring = keyring
        self.limits = limits
        self.process = process if process is not None else ProcessState()
        self.metrics = self.process.metrics

    async def get(
        self, cache_key: str, principal: Principal, fill_wait: float | None = None
    ) -> Entry:
        """The live entry. With `fill_wait`, a miss is coordinated across the cluster: see
        _wait_for_fill."""
        check_cache_key(cache_key)
        await self._check_token_alive(principal)
        row, counted = await self._find(cache_key)
        if row is None and fill_wait is not None:
            row, counted = await self._wait_for_fill(cache_key, principal, fill_wait)
        if row is None:
            reason = await self._miss(cache_key, principal)
            raise EntryNotFound(f"no live entry for this key ({reason})", reason=reason)
        # When the database counted the hit, a refusal raises inside the request's transaction,
        # which rolls the count back; from memory, nothing is counted before this check.
        access.check_read(principal, row)
        try:
            payload = self.keyring.open(row["data"], bound_data(row))
        except UnreadableEntry as exc:
            # Tampering, or a key dropped from the ring too early: the caller gets a 409, and
            # an operator must hear of it too. The row stays for inspection.
            log.warning(
                "unreadable entry",
                extra={"cache_key": cache_key, "key_id": row["key_id"], "reason": str(exc)},
            )
            self._audit_read(principal, cache_key, "unreadable")
            raise
        refresh_lease = (
            await self._refresh_lease(cache_key, principal, row) if fill_wait is not None else None
        )
        return self._hit(cache_key, principal, row, payload, counted, refresh_lease)

    async def _refresh_lease(
        self, cache_key: str, principal: Principal, row: Mapping[str, Any]
    ) -> str | None:
        """For the one reader, across the cluster, of a token in its refresh window: the lease to
        write its replacement with. Everyone, this reader included, gets the current token now."""
        fills = self.process.fills
        if not fills.refresh_due(row, self._database_time()):
            return None
        lease_id = secrets.token_urlsafe(16)
        try:
            taken, lease_left = await self.repository.take_fill_lease(
                cache_key, principal.name, lease_id, fills.lease_seconds
            )
        except DatabaseUnavailable:
            return None  # a refresh can wait; the hit cannot fail for it
        fills.refreshing(cache_key, lease_left)
        if not taken:
            return None
        self.metrics.fill_lease_granted("refresh")
        return lease_id

    async def _miss(self, cache_key: str, principal: Principal) -> str:
        """Log, count and audit a miss; its reason, "absent" or "expired"."""
        expired = await self.repository.expires_at(cache_key) is not None
        reason = "expired" if expired else "absent"
        if self.process.log_reads:
            log.info(
                "cache miss",
                extra={"cache_key": cache_key, "reason": reason, "actor": principal.name},
            )
        self.metrics.miss(reason)
        self._audit_read(principal, cache_key, reason)
        return reason

    async def _wait_for_fill(
        self, cache_key: str, principal: Principal, wait: float
    ) -> tuple[Mapping[str, Any] | None, bool]:
        """A miss filled once for the whole cluster. The first caller takes the key's fill lease
        and is answered FillLeaseGranted: it fetches the value and writes it. The others wait,
        holding no connection, for the key's next change on any replica (the holder's write or
        release), for the lease to run out (then one of them takes it over), or for `wait`
        seconds (then they are answered a miss and fetch it themselves)."""
        fills = self.process.fills
        deadline = time.monotonic() + min(wait, fills.max_wait_seconds)
        with fills.admitted() as admitted:
            if not admitted:
                await self._unfilled(
                    cache_key,
                    principal,
                    "busy",
                    "too many callers are waiting for fills on this server",
                )
            waited = False
            while True:
                lease_id = secrets.token_urlsafe(16)
                taken, lease_left = await self.repository.take_fill_lease(
                    cache_key, principal.name, lease_id, fills.lease_seconds
                )
                if taken:
                    # Written since this caller looked, perhaps by the last holder: no fill needed.
                    row, counted = await self._find(cache_key)
                    if row is not None:
                        await self.repository.end_fill_lease(cache_key, lease_id)
                        return row, counted
                await (
                    self.repository.commit()
                )  # the lease stands for everyone; no connection held from here
                if taken:
                    reason = await self._miss(cache_key, principal)
                    self.metrics.fill_lease_granted("fill")
                    if waited:
                        self.metrics.fill_wait("took_over")
                    raise FillLeaseGranted(
                        f"no live entry for this key ({reason}); this caller holds its fill lease: fetch the "
                        "value and write it with the lease, or release the lease if the fetch fails",
                        reason=reason,
                        lease_id=lease_id,
                        lease_seconds=fills.lease_seconds,
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    await self._unfilled(
                        cache_key, principal, "timed_out", "no fill arrived within fill_wait"
                    )
                await fills.changed(cache_key, min(left, lease_left + 0.01))
                waited = True
                row, counted = await self._find(cache_key)
                if row is not None:
                    self.metrics.fill_wait("filled")
                    return row, counted

    async def _unfilled(
        self, cache_key: str, principal: Principal, outcome: str, why: str
    ) -> NoReturn:
        reason = await self._miss(cache_key, principal)
        self.metrics.fill_wait(outcome)
        raise EntryNotFound(
            f"no live entry for this key ({reason}); {why}: fetch it yourself",
            reason=reason,
            headers={FILL_HEADER: outcome.replace("_", "-")},
        )

    def get_from_memory(
        self, cache_key: str, principal: Principal, coordinated: bool = False
    ) -> Entry | None:
        """The hit, when memory alone can serve it: the tier holds the live entry, the caller's
        token is known to be alive and may read it, and (for a `coordinated` read, one with
        fill_wait) it is not a token due for a refresh. Anything else answers None and is left to
        get(), which can answer everything (misses, refusals, errors) and tells no differently."""
        tier = self.process.tier
        if tier is None or not tier.serving or not self._alive_in_memory(principal):
            return None
        entry, now = tier.get(cache_key), self._database_time()
        if entry is None or entry.expires_at <= now or not access.may_read(principal, entry.row):
            return None
        if coordinated and self.process.fills.refresh_due(entry.row, now):
            return None
        try:
            payload = self.keyring.open(entry.row["data"], bound_data(entry.row))
        except UnreadableEntry:
            return None
        return self._hit(cache_key, principal, entry.row, payload, counted=False)

    def _hit(
        self,
        cache_key: str,
        principal: Principal,
        row: Mapping[str, Any],
        payload: bytes,
        counted: bool,
        refresh_lease: str | None = None,
    ) -> Entry:
        """Count, log and audit a hit on `row`, whose sealed data opened as `payload`."""
        meta = _meta_fields(row)
        if not counted:
            hits, now = self.process.hits, self._database_now()
            hits.hit(cache_key, row["write_id"], now)
            meta.update(
                access_count=row["access_count"] + hits.pending(cache_key, row["write_id"]),
                accessed_at=now,
            )
        if self.process.log_reads:
            log.info(
                "cache hit",
                extra={
                    "cache_key": cache_key,
                    "access_count": meta["access_count"],
                    "actor": principal.name,
                },
            )
        self.metrics.hit()
        self._audit_read(principal, cache_key, "hit")
        return Entry(**meta, data=msgspec.json.decode(payload), refresh_lease=refresh_lease)

    async def _find(self, cache_key: str) -> tuple[Mapping[str, Any] | None, bool]:
        """The live row, and whether the database already counted this hit.

        From the memory tier while it serves (a miss there reads and fills it); otherwise the
        database counts the hit as it reads, and if the database is down, memory may stand in.
        """
        tier = self.process.tier
        if tier is not None and tier.serving:
            entry = tier.get(cache_key)
            if entry is None or entry.expires_at <= self._database_time():
                entry = await tier.load(cache_key, lambda: self.repository.read_live(cache_key))
            return (None if entry is None else entry.row), False
        try:
            row = await self.repository.get_and_touch(cache_key)
        except DatabaseUnavailable:
            entry = self._outage_entry(cache_key)
            if entry is None:
                raise
            log.warning("database unreachable: serving from memory", extra={"cache_key": cache_key})
            return entry.row, False
        return (None if row is None else columns(row)), True

    def _outage_entry(self, cache_key: str) -> CachedEntry | None:
        tier = self.process.tier
        if tier is None or not self.process.serve_from_memory_during_outage:
            return None
        entry = tier.get(cache_key)
        return entry if entry is not None and entry.expires_at > self._database_time() else None

    def _database_time(self) -> float:
        listener = self.process.tier.listener if self.process.tier is not None else None
        return listener.database_time() if listener is not None else time.time()

    def _database_now(self) -> datetime:
        return datetime.fromtimestamp(self._database_time(), UTC)

    async def _invalidate(self, message: Invalidation) -> None:
        """Tell every replica, in this transaction; this one acts on it at once. (Should the
        transaction then fail, this replica alone forgot entries it could have kept, or took
        a cleaned-up execution for ended: the engine cleans up only what has ended.)"""
        await self.repository.announce(message)
        self.process.on_invalidation(message)

    def _audit_read(self, principal: Principal, cache_key: str, outcome: str) -> None:
        if self.process.read_audit is not None:
            self.process.read_audit.record(principal, cache_key, outcome)

    async def _check_token_alive(self, principal: Principal) -> None:
        """An execution token dies with its execution (or the parent it was minted under)."""
        if principal.execution_id is None:
            return
        ended = await self.process.ended_executions.first_ended(
            _execution_ids(principal),
            self.repository.ended_among,
            during_outage=self.process.serve_from_memory_during_outage,
        )
        if ended is not None:
            raise TokenRevoked(f"execution {ended} has ended; its execution tokens no longer work")

    def _alive_in_memory(self, principal: Principal) -> bool:
        """Whether memory alone knows the caller's token is alive (_check_token_alive's answer)."""
        return principal.execution_id is None or self.process.ended_executions.known_live(
            _execution_ids(principal)
        )

    async def put(
        self, cache_key: str, body: EntryPut, principal: Principal, fill_lease: str | None = None
    ) -> EntryWritten:
        """Create or replace the entry; `fill_lease`, the lease under which the writer fetched it,
        ends with the write, and every caller waiting for the fill wakes on the write's NOTIFY."""
        check_cache_key(cache_key)
        scope_type, execution_id = _scope(body)
        credential_name = body.credential_name or cache_key.split(":", 1)[0]
        if not credential_name:
            raise InvalidEntry("credential_name is empty and the cache key does not start with one")
        check_name(credential_name, "credential_name")
        check_name(body.credential_type, "credential_type")
        ttl_seconds, expires_at = self._expiry(body)
        values: dict[str, Any] = {
            "cache_key": cache_key,
            "credential_name": credential_name,
            "credential_type": body.credential_type,
            "cache_type": body.cache_type,
            "scope_type": scope_type,
            "execution_id": execution_id,
            "parent_execution_id": body.parent_execution_id,
            "written_by": principal.name,
            "write_id": new_write_id(),
            "ttl_seconds": ttl_seconds,
            "expires_at": expires_at,
        }
        await self._check_token_alive(principal)
        access.check_write(principal, values)
        plaintext = msgspec.json.encode(body.token_data)
        if len(plaintext) > self.limits.max_token_data_bytes:
            raise InvalidEntry(
                f"token_data is {len(plaintext)} bytes as JSON; the limit is "
                f"{self.limits.max_token_data_bytes} (KEYCHAIN_MAX_TOKEN_DATA_BYTES)"
            )
        sealed = self.keyring.seal(plaintext, bound_data(values))
        values.update(data=sealed.envelope, key_id=sealed.key_id)
        row, created = await self._store(values, principal)
        if (
            fill_lease is not None
            and (held := await self.repository.end_fill_lease(cache_key, fill_lease)) is not None
        ):
            self.metrics.filled(held)
        await self._invalidate(Invalidation(keys=[cache_key]))
        log.info(
            "cache write",
            extra={
                "cache_key": cache_key,
                "outcome": "created" if created else "replaced",
                "actor": principal.name,
            },
        )
        self.metrics.write(created=created)
        return EntryWritten(**_meta_fields(row), created=created)

    async def _store(self, values: dict[str, Any], principal: Principal) -> tuple[Any, bool]:
        """Insert, or replace what is there if the principal may; a new key costs one statement."""
        for _ in range(3):  # a row deleted or inserted between our statements: try again
            row = await self.repository.insert_new(values)
            if row is not None:
                return row, True
            existing = await self.repository.lock(values["cache_key"])
            if existing is None:
                continue
            if existing.live:
                access.check_replace(principal, columns(existing))
            return await self.repository.replace(values), False
        raise DatabaseUnavailable("the entry kept changing under concurrent writers; retry")

    def _expiry(self, body: EntryPut) -> tuple[int, datetime | None]:
        """TTL in seconds and the expiry as given, or None for now() + TTL (the database's now)."""
        if body.expires_at is not None:
            remaining = (body.expires_at - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                raise InvalidEntry("expires_at is in the past")
            ttl = (
                _whole_seconds(body.ttl_seconds)
                if body.ttl_seconds is not None
                else math.ceil(remaining)
            )
            self._check_ttl(math.ceil(remaining), "expires_at")
            self._check_ttl(ttl, "ttl_seconds")
            return ttl, body.expires_at
        ttl = (
            self.limits.default_ttl_seconds
            if body.ttl_seconds is None
            else _whole_seconds(body.ttl_seconds)
        )
        self._check_ttl(ttl, "ttl_seconds")
        return ttl, None

    def _check_ttl(self, seconds: int, field: str) -> None:
        if seconds <= 0:
            raise InvalidEntry(f"{field} must give a positive lifetime, got {seconds} seconds")
        if seconds > self.limits.max_ttl_seconds:
            raise InvalidEntry(
                f"{field} gives {seconds} seconds; the maximum is {self.limits.max_ttl_seconds}"
            )

    async def delete(self, cache_key: str, principal: Principal) -> None:
        check_cache_key(cache_key)
        await self._check_token_alive(principal)
        existing = await self.repository.lock(cache_key)
        if existing is None:
            raise EntryNotFound("no entry for this key", reason="absent")
        if existing.live:
            access.check_replace(principal, columns(existing))
        await self.repository.delete(cache_key)
        await self._invalidate(Invalidation(keys=[cache_key]))
        log.info("cache delete", extra={"cache_key": cache_key, "actor": principal.name})
        self.metrics.delete()

    async def release_fill_lease(self, cache_key: str, lease_id: str) -> None:
        """The holder could not fetch the value: end its lease at once, and wake the callers
        waiting for the fill (one of them takes the lease over)."""
        check_cache_key(cache_key)
        if await self.repository.end_fill_lease(cache_key, lease_id) is None:
            raise EntryNotFound(
                "no such fill lease on this key: it ran out, or was released", reason="absent"
            )
        await self._invalidate(Invalidation(keys=[cache_key]))

    async def check_ready(self) -> None:
        """Raises DatabaseUnavailable unless the table answers."""
        await self.repository.check_table()

    async def live_entries_by_scope(self) -> list[tuple[str, int]]:
        return await self.repository.live_entries_by_scope()

    async def cleanup_execution(self, execution_id: int) -> int:
        """Drop the execution's entries and end it: its execution tokens stop working."""
        deleted = await self.repository.delete_execution(execution_id)
        await self.repository.mark_ended(execution_id)
        await self._invalidate(Invalidation(ended_execution_id=execution_id))
        log.info("execution cleanup", extra={"execution_id": execution_id, "deleted": deleted})
        self.metrics.execution_cleanup(deleted)
        return deleted

    async def mint_execution_token(
        self, issuer: Principal, request: ExecutionTokenRequest
    ) -> ExecutionToken:
        return await mint_execution_token(
            self.repository, self.process.execution_tokens, issuer, request
        )

    async def list_meta(self, query: EntryQuery) -> EntryPage:
        if query.credential_name is not None:
            check_name(query.credential_name, "credential_name")
        rows, total = await self.repository.list_meta(query)
        items = [EntryMeta(**_meta_fields(row)) for row in rows]
        return EntryPage(items=items, total=total, limit=query.limit, offset=query.offset)

    async def purge(
        self, names: Sequence[str], prefixes: Sequence[str] = (), scope_type: str | None = None
    ) -> int:
        """Drop every entry of these credential names (and names under the prefixes): every
        execution, every scope or the one given. Answers how many went."""
        messages = await purge_credentials(self.repository, names, prefixes, scope_type)
        for message in messages:
            self.process.on_invalidation(message)
        return sum(len(message.keys) for message in messages)


async def mint_execution_token(
    repository: KeychainRepository,
    execution_tokens: ExecutionTokens | None,
    issuer: Principal,
    request: ExecutionTokenRequest,
) -> ExecutionToken:
    """The rules of minting, shared by the API and `keychain mint-token`."""
    if execution_tokens is None:
        raise FeatureDisabled(
            "execution tokens are not enabled on this server: set KEYCHAIN_TOKEN_SIGNING_KEYS"
        )
    try:
        grants = Grants(
            read=check_patterns(request.read, "read"), write=check_patterns(request.write, "write")
        )
    except ConfigurationError as exc:
        raise InvalidEntry(str(exc)) from None
    ttl = request.ttl_seconds or execution_tokens.max_ttl_seconds
    if ttl > execution_tokens.max_ttl_seconds:
        raise InvalidEntry(
            f"ttl_seconds is {ttl}; execution tokens live at most {execution_tokens.max_ttl_seconds} "
            "seconds (KEYCHAIN_EXECUTION_TOKEN_TTL_SECONDS)"
        )
    ids = tuple(e for e in (request.execution_id, request.parent_execution_id) if e is not None)
    ended = await repository.ended_among(ids)
    if ended is not None:
        raise ExecutionEnded(f"execution {ended} has ended; no token is minted for it")
    minted = execution_tokens.mint(
        issuer.name, request.execution_id, request.parent_execution_id, grants, ttl
    )
    log.info(
        "execution token minted", extra={"execution_id": request.execution_id, "actor": issuer.name}
    )
    return ExecutionToken(
        token=minted.token,
        execution_id=request.execution_id,
        parent_execution_id=request.parent_execution_id,
        read=list(grants.read),
        write=list(grants.write),
        expires_at=minted.expires_at,
    )


def _scope(body: EntryPut) -> tuple[str, int | None]:
    """The canonical scope_type of a write, and its execution id.

    Upstream NoETL's worker client says "local" for an execution's entry, with only a
    parent_execution_id when a sub-execution caches for its parent (the key then names the
    parent), and "shared" for what it does not tie to an execution."""
    execution_id = body.execution_id
    scope_type = body.scope_type
    if scope_type == "local":
        scope_type, execution_id = (
            "execution",
            execution_id if execution_id is not None else body.parent_execution_id,
        )
    elif scope_type == "shared" or scope_type is None:
        scope_type = "execution" if execution_id is not None else "global"
    if scope_type == "execution" and execution_id is None:
        raise InvalidEntry("scope_type 'execution' needs an execution_id")
    return scope_type, execution_id


async def purge_credentials(
    repository: KeychainRepository,
    names: Sequence[str],
    prefixes: Sequence[str] = (),
    scope_type: str | None = None,
) -> list[Invalidation]:
    """The rules of a purge, shared by the API, Secret Manager events and `keychain purge`:
    the rows go and every replica hears of their keys, both in the caller's transaction."""
    for name in (*names, *prefixes):
        check_name(name, "credential_name")
    keys = await repository.delete_credentials(names, prefixes, scope_type)
    messages = key_messages(keys)
    for message in messages:
        await repository.announce(message)
    log.info(
        "credential purge",
        extra={
            "credential_names": list(names),
            "prefixes": list(prefixes),
            "scope_type": scope_type,
            "deleted": len(keys),
        },
    )
    return messages


def _execution_ids(principal: Principal) -> tuple[int, ...]:
    return tuple(
        e for e in (principal.execution_id, principal.parent_execution_id) if e is not None
    )


_META_FIELDS = EntryMeta.__struct_fields__


def _meta_fields(row: Any) -> dict[str, Any]:
    mapping = row if isinstance(row, Mapping) else row._mapping
    return {name: mapping[name] for name in _META_FIELDS}
