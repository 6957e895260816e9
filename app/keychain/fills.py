"""Callers of this process waiting for another caller's fill of a missing entry.

A fill lease (a row in PostgreSQL) names the one caller, on any replica, that fetches a missing
entry from its provider; the others wait here, holding no database connection, until the key's
next invalidation arrives (the holder's write, or its release, announced by NOTIFY to every
replica), the lease runs out, or their own wait does. Bounded: past `max_waiters` a caller is
not made to wait at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from app.invalidation import Invalidation
from app.settings import Settings

# A waiter looks again at least this often: a notification lost in a gap in listening costs
# it this much, never its whole wait.
RECHECK_SECONDS = 1.0
MAX_REMEMBERED_REFRESHES = 10_000


class _KeyWaiters:
    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.count = 0


class FillWaits:
    def __init__(
        self,
        lease_seconds: float,
        max_wait_seconds: float,
        max_waiters: int,
        refresh_window_fraction: float,
    ) -> None:
        self.lease_seconds = lease_seconds
        self.max_wait_seconds = max_wait_seconds
        self.max_waiters = max_waiters
        self.refresh_window_fraction = refresh_window_fraction
        self._waiting = 0
        self._by_key: dict[str, _KeyWaiters] = {}
        # Keys whose refresh lease some reader holds, until when (monotonic): their readers need
        # not ask the database again, and are served from memory meanwhile.
        self._refreshing: dict[str, float] = {}

    @classmethod
    def configured(cls, settings: Settings) -> FillWaits:
        return cls(
            settings.fill_lease_seconds,
            settings.fill_max_wait_seconds,
            settings.fill_max_waiters,
            settings.refresh_window_fraction,
        )

    def refresh_due(self, row: Mapping[str, Any], now: float) -> bool:
        """Whether a token entry is in its refresh window (`now`: the database's epoch seconds)
        and no reader of this process is known to hold its refresh lease."""
        if row["cache_type"] != "token":
            return False
        expires_at, created_at = row["expires_at"].timestamp(), row["created_at"].timestamp()
        # Per entry, from its random write id: 0 to 0.5 of the window again.
        jitter = (row["write_id"] or b"\0")[0] / 255 / 2
        window = (expires_at - created_at) * self.refresh_window_fraction * (1 + jitter)
        if now < expires_at - window:
            return False
        held_until = self._refreshing.get(row["cache_key"])
        return held_until is None or held_until <= time.monotonic()

    def refreshing(self, cache_key: str, seconds: float) -> None:
        """A reader (on any replica) holds the key's refresh lease for `seconds` more."""
        if len(self._refreshing) >= MAX_REMEMBERED_REFRESHES:
            now = time.monotonic()
            self._refreshing = {k: t for k, t in self._refreshing.items() if t > now}
        self._refreshing[cache_key] = time.monotonic() + seconds

    @contextlib.contextmanager
    def admitted(self) -> Iterator[bool]:
        """Whether one more caller may wait (then it counts as waiting until the block ends)."""
        if self._waiting >= self.max_waiters:
            yield False
            return
        self._waiting += 1
        try:
            yield True
        finally:
            self._waiting -= 1

    def on_invalidation(self, message: Invalidation) -> None:
        for cache_key in message.keys:
            self._refreshing.pop(cache_key, None)
            waiters = self._by_key.pop(cache_key, None)
            if waiters is not None:
                waiters.changed.set()

    async def changed(self, cache_key: str, timeout: float) -> None:
        """Return when the key next changes (on any replica), or after `timeout` seconds."""
        waiters = self._by_key.setdefault(cache_key, _KeyWaiters())
        waiters.count += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiters.changed.wait(), min(timeout, RECHECK_SECONDS))
        finally:
            waiters.count -= 1
            if not waiters.count and self._by_key.get(cache_key) is waiters:
                del self._by_key[cache_key]
