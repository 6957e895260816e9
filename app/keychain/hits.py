"""Hits served from memory are counted in memory and written back in batches.

One UPDATE per flush, at most every KEYCHAIN_HIT_FLUSH_SECONDS and at shutdown. Counts are
kept per (cache key, write id): a replaced entry starts again at 0, so hits counted against
the version it replaced must not land on it. A flush that fails keeps its counts for the next
one, so after a clean shutdown none is lost and after a crash at most one interval's are.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from app.db.engine import Database
from app.errors import DatabaseUnavailable
from app.keychain.repository import KeychainRepository, PendingHits

log = logging.getLogger(__name__)


class _Counted:
    """One key's hits since the last flush: updated in place on every hit."""

    __slots__ = ("count", "last")

    def __init__(self, count: int, last: datetime) -> None:
        self.count = count
        self.last = last


class HitCounter:
    def __init__(self) -> None:
        self._pending: dict[tuple[str, bytes | None], _Counted] = {}

    def hit(self, cache_key: str, write_id: bytes | None, at: datetime) -> None:
        counted = self._pending.get((cache_key, write_id))
        if counted is None:
            self._pending[(cache_key, write_id)] = _Counted(1, at)
        else:
            counted.count += 1
            counted.last = max(counted.last, at)

    def pending(self, cache_key: str, write_id: bytes | None) -> int:
        counted = self._pending.get((cache_key, write_id))
        return 0 if counted is None else counted.count

    def take(self) -> PendingHits:
        pending, self._pending = self._pending, {}
        return {key: (counted.count, counted.last) for key, counted in pending.items()}

    def give_back(self, hits: PendingHits) -> None:
        for (cache_key, write_id), (count, at) in hits.items():
            counted = self._pending.setdefault((cache_key, write_id), _Counted(0, at))
            counted.count += count
            counted.last = max(counted.last, at)


async def flush_hits(counter: HitCounter, database: Database) -> int:
    """Write pending counts in one statement; on failure they wait for the next flush."""
    hits = counter.take()
    if not hits:
        return 0
    try:
        async with database.transaction() as conn:
            await KeychainRepository(conn).add_hits(hits)
    except BaseException:
        counter.give_back(hits)
        raise
    return len(hits)


async def run_hit_flusher(counter: HitCounter, database: Database, interval: float) -> None:
    """Flush every `interval` seconds until cancelled, then once more."""
    try:
        while True:
            await asyncio.sleep(interval)
            try:
                await flush_hits(counter, database)
            except DatabaseUnavailable:
                log.warning(
                    "hit counts not written: the database is unreachable; kept for the next flush"
                )
            except Exception:
                log.exception("writing hit counts failed; kept for the next flush")
    finally:
        try:
            await flush_hits(counter, database)
        except Exception:
            log.warning("hit counts lost at shutdown: the last flush failed")
