"""Which executions have ended, known in memory so an execution token costs no database read.

"Ended" never changes back, so it is kept for good (bounded, oldest forgotten first). "Not
ended" is kept only while the invalidation listener is connected, and is dropped at every
reconnect: a cleanup on any replica reaches every other one as a notification, and one that
committed during a gap in listening could have been missed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from app.errors import DatabaseUnavailable
from app.invalidation import Invalidation, InvalidationListener

MAX_REMEMBERED = 100_000


class EndedExecutions:
    def __init__(self) -> None:
        # Set by the lifespan once it listens; without one, every check reads the database.
        self.listener: InvalidationListener | None = None
        self._ended: OrderedDict[int, None] = OrderedDict()
        self._live: set[int] = set()
        self._live_epoch = -1

    def on_invalidation(self, message: Invalidation) -> None:
        if message.ended_execution_id is not None:
            self.mark_ended(message.ended_execution_id)

    def mark_ended(self, execution_id: int) -> None:
        self._live.discard(execution_id)
        self._ended[execution_id] = None
        if len(self._ended) > MAX_REMEMBERED:
            self._ended.popitem(last=False)

    def _listening_epoch(self) -> int | None:
        if self.listener is None or not self.listener.connected:
            return None
        if self._live_epoch != self.listener.epoch:
            self._live.clear()  # learned before a gap in listening
            self._live_epoch = self.listener.epoch
        return self._live_epoch

    def known_live(self, execution_ids: tuple[int, ...]) -> bool:
        """Whether memory alone knows that none of these executions has ended."""
        epoch = self._listening_epoch()
        return epoch is not None and all(e in self._live for e in execution_ids)

    async def first_ended(
        self,
        execution_ids: tuple[int, ...],
        ask_database: Callable[[tuple[int, ...]], Awaitable[int | None]],
        *,
        during_outage: bool = False,
    ) -> int | None:
        """The first of these executions that has ended, or None; the database only for what
        memory cannot answer. With `during_outage`, a database that cannot answer leaves what
        was known before the gap standing: while it is down for everyone, nothing can end."""
        for execution_id in execution_ids:
            if execution_id in self._ended:
                return execution_id
        epoch = self._listening_epoch()
        unknown = tuple(e for e in execution_ids if epoch is None or e not in self._live)
        if not unknown:
            return None
        try:
            ended = await ask_database(unknown)
        except DatabaseUnavailable:
            if during_outage and all(e in self._live for e in execution_ids):
                return None
            raise
        if ended is not None:
            self.mark_ended(ended)
            return ended
        # Kept only if still listening in the same epoch; one that ended meanwhile was marked.
        if epoch is not None and self._listening_epoch() == epoch:
            self._live.update(e for e in unknown if e not in self._ended)
        return None
