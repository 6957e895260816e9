"""Each server process's memory tier: a hit served with no database round trip.

Entries are held as read from the table: the payload stays the sealed envelope and is opened
per hit (about 3 µs for a small secret), so no plaintext sits in the heap between requests.
Bounded by entry count and by bytes, least recently used first out.

The tier serves only while the invalidation listener is connected, and empties itself when
the listener's epoch moves (a reconnect): a change committed during a gap may have gone
unheard. A fill that began before an invalidation arrived is not kept, so a slow read can
never put back what a notification just dropped.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.invalidation import Invalidation, InvalidationListener

# What a cached row costs beside its payload and key, roughly (dict, datetimes, strings).
_ROW_OVERHEAD_BYTES = 1200


@dataclass(slots=True)
class CachedEntry:
    row: Mapping[str, Any]
    expires_at: float  # epoch seconds, the database's clock
    size: int


def cached_entry(row: Mapping[str, Any]) -> CachedEntry:
    size = (
        len(row["data"]) + len(row["cache_key"]) + len(row["credential_name"]) + _ROW_OVERHEAD_BYTES
    )
    return CachedEntry(row=row, expires_at=row["expires_at"].timestamp(), size=size)


class MemoryTier:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # Set by the lifespan once it listens; without a listener the tier never serves.
        self.listener: InvalidationListener | None = None
        self._entries: OrderedDict[str, CachedEntry] = OrderedDict()
        self._by_execution: dict[int, set[str]] = {}
        self._bytes = 0
        self._epoch = -1
        # Moves on every invalidation; a fill begun under an older generation is dropped.
        self._generation = 0
        self._loading: dict[str, asyncio.Future[CachedEntry | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def serving(self) -> bool:
        listener = self.listener
        if listener is None or not listener.connected:
            return False
        if self._epoch != listener.epoch:
            self.clear()  # filled before a gap in listening
            self._epoch = listener.epoch
        return True

    def get(self, cache_key: str) -> CachedEntry | None:
        entry = self._entries.get(cache_key)
        if entry is not None:
            self._entries.move_to_end(cache_key)
        return entry

    async def load(
        self, cache_key: str, read: Callable[[], Awaitable[Mapping[str, Any] | None]]
    ) -> CachedEntry | None:
        """The entry as `read()` finds it (its live row, or None), filling the tier; concurrent
        loads of one key in this process make one read."""
        pending = self._loading.get(cache_key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CachedEntry | None] = asyncio.get_running_loop().create_future()
        self._loading[cache_key] = future
        generation, epoch = self._generation, self._epoch
        try:
            row = await read()
            entry = None if row is None else cached_entry(row)
            if (
                entry is not None
                and self.serving
                and generation == self._generation
                and epoch == self._epoch
            ):
                self._put(cache_key, entry)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else need
            raise
        finally:
            del self._loading[cache_key]

    def _put(self, cache_key: str, entry: CachedEntry) -> None:
        if entry.size > self.max_bytes:
            return
        self._remove(cache_key)
        self._entries[cache_key] = entry
        self._bytes += entry.size
        for execution_id in (entry.row["execution_id"], entry.row["parent_execution_id"]):
            if execution_id is not None:
                self._by_execution.setdefault(execution_id, set()).add(cache_key)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def _remove(self, cache_key: str) -> None:
        entry = self._entries.pop(cache_key, None)
        if entry is None:
            return
        self._bytes -= entry.size
        for execution_id in (entry.row["execution_id"], entry.row["parent_execution_id"]):
            keys = self._by_execution.get(execution_id) if execution_id is not None else None
            if keys is not None:
                keys.discard(cache_key)
                if not keys:
                    del self._by_execution[execution_id]

    def drop(self, cache_keys: list[str]) -> None:
        self._generation += 1
        for cache_key in cache_keys:
            self._remove(cache_key)

    def on_invalidation(self, message: Invalidation) -> None:
        self._generation += 1
        for cache_key in message.keys:
            self._remove(cache_key)
        if message.ended_execution_id is not None:
            for cache_key in list(self._by_execution.get(message.ended_execution_id, ())):
                self._remove(cache_key)
        if message.expired_before is not None:
            for cache_key in [
                k for k, e in self._entries.items() if e.expires_at <= message.expired_before
            ]:
                self._remove(cache_key)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._by_execution.clear()
        self._bytes = 0
