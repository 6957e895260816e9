"""The rules of the cache: key syntax, TTL, scopes, encryption and access tracking."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.crypto import KeyRing
from app.errors import EntryNotFound, InvalidEntry, UnreadableEntry
from app.keychain.repository import KeychainRepository
from app.keychain.schemas import Entry, EntryMeta, EntryPage, EntryPut, EntryQuery
from app.metrics import KeychainMetrics

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 512
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WHOLE_NUMBER = re.compile(r"^\s*[+-]?\d{1,12}\s*$")


@dataclass(frozen=True)
class TtlPolicy:
    default_seconds: int
    max_seconds: int


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
            raise InvalidEntry("ttl_seconds must be a whole number of seconds, such as 3600 or \"3600\"")
        value = int(value)
    return value


class KeychainService:
    def __init__(
        self,
        repository: KeychainRepository,
        keyring: KeyRing,
        ttl: TtlPolicy,
        metrics: KeychainMetrics | None = None,
    ) -> None:
        self.repository = repository
        self.keyring = keyring
        self.ttl = ttl
        # The app passes its own; without one (scripts, unit tests) counts go to a private registry.
        self.metrics = metrics if metrics is not None else KeychainMetrics()

    async def get(self, cache_key: str) -> Entry:
        check_cache_key(cache_key)
        row = await self.repository.get_and_touch(cache_key)
        if row is None:
            expired = await self.repository.expires_at(cache_key) is not None
            reason = "expired" if expired else "absent"
            log.info("cache miss", extra={"cache_key": cache_key, "reason": reason})
            self.metrics.miss(reason)
            raise EntryNotFound(f"no live entry for this key ({reason})", reason=reason)
        try:
            payload = self.keyring.open(row.data, cache_key.encode())
        except UnreadableEntry as exc:
            # Tampering, or a key dropped from the ring too early: the caller gets a 409, and
            # an operator must hear of it too. The row stays for inspection.
            log.warning(
                "unreadable entry", extra={"cache_key": cache_key, "key_id": row.key_id, "reason": str(exc)}
            )
            raise
        log.info("cache hit", extra={"cache_key": cache_key, "access_count": row.access_count})
        self.metrics.hit()
        return Entry(**_meta_fields(row), data=msgspec.json.decode(payload))

    async def put(self, cache_key: str, body: EntryPut) -> tuple[EntryMeta, bool]:
        check_cache_key(cache_key)
        scope_type = body.scope_type or ("execution" if body.execution_id is not None else "global")
        if scope_type == "execution" and body.execution_id is None:
            raise InvalidEntry("scope_type 'execution' needs an execution_id")
        credential_name = body.credential_name or cache_key.split(":", 1)[0]
        if not credential_name:
            raise InvalidEntry("credential_name is empty and the cache key does not start with one")
        check_name(credential_name, "credential_name")
        check_name(body.credential_type, "credential_type")
        ttl_seconds, expires_at = self._expiry(body)
        sealed = self.keyring.seal(msgspec.json.encode(body.token_data), cache_key.encode())
        row, created = await self.repository.upsert(
            {
                "cache_key": cache_key,
                "credential_name": credential_name,
                "credential_type": body.credential_type,
                "cache_type": body.cache_type,
                "scope_type": scope_type,
                "execution_id": body.execution_id,
                "parent_execution_id": body.parent_execution_id,
                "data": sealed.envelope,
                "key_id": sealed.key_id,
                "ttl_seconds": ttl_seconds,
                "expires_at": expires_at,
            }
        )
        log.info("cache write", extra={"cache_key": cache_key, "outcome": "created" if created else "replaced"})
        self.metrics.write(created=created)
        return EntryMeta(**_meta_fields(row)), created

    def _expiry(self, body: EntryPut) -> tuple[int, datetime | None]:
        """TTL in seconds and the expiry as given, or None for now() + TTL (the database's now)."""
        if body.expires_at is not None:
            remaining = (body.expires_at - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                raise InvalidEntry("expires_at is in the past")
            ttl = _whole_seconds(body.ttl_seconds) if body.ttl_seconds is not None else math.ceil(remaining)
            self._check_ttl(math.ceil(remaining), "expires_at")
            self._check_ttl(ttl, "ttl_seconds")
            return ttl, body.expires_at
        ttl = self.ttl.default_seconds if body.ttl_seconds is None else _whole_seconds(body.ttl_seconds)
        self._check_ttl(ttl, "ttl_seconds")
        return ttl, None

    def _check_ttl(self, seconds: int, field: str) -> None:
        if seconds <= 0:
            raise InvalidEntry(f"{field} must give a positive lifetime, got {seconds} seconds")
        if seconds > self.ttl.max_seconds:
            raise InvalidEntry(
                f"{field} gives {seconds} seconds; the maximum is {self.ttl.max_seconds}"
            )

    async def delete(self, cache_key: str) -> None:
        check_cache_key(cache_key)
        if not await self.repository.delete(cache_key):
            raise EntryNotFound("no entry for this key", reason="absent")
        log.info("cache delete", extra={"cache_key": cache_key})
        self.metrics.delete()

    async def check_ready(self) -> None:
        """Raises DatabaseUnavailable unless the table answers."""
        await self.repository.check_table()

    async def live_entries_by_scope(self) -> list[tuple[str, int]]:
        return await self.repository.live_entries_by_scope()

    async def cleanup_execution(self, execution_id: int) -> int:
        deleted = await self.repository.delete_execution(execution_id)
        log.info("execution cleanup", extra={"execution_id": execution_id, "deleted": deleted})
        self.metrics.execution_cleanup(deleted)
        return deleted

    async def list_meta(self, query: EntryQuery) -> EntryPage:
        if query.credential_name is not None:
            check_name(query.credential_name, "credential_name")
        rows, total = await self.repository.list_meta(query)
        items = [EntryMeta(**_meta_fields(row)) for row in rows]
        return EntryPage(items=items, total=total, limit=query.limit, offset=query.offset)


_META_FIELDS = EntryMeta.__struct_fields__


def _meta_fields(row: Any) -> dict[str, Any]:
    mapping = row._mapping
    return {name: mapping[name] for name in _META_FIELDS}
