"""Loop-bound resources (an httpx pool, a gRPC channel): one per event loop, closed as it ends."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Strong references until they have run: a collected generator would be closed at once by the
# loop's finalizer hook, closing a resource that is still in use. Worker threads run loops of
# their own, so the table is shared across threads.
_pending: dict[AsyncGenerator[None, None], asyncio.AbstractEventLoop] = {}
_pending_lock = threading.Lock()


def close_with_loop(close: Callable[[], Awaitable[object]]) -> None:
    """Run `close()` on the running loop while that loop shuts down.

    A pool or channel can only be closed on the loop it was made on, and once asyncio.run()
    has returned that loop is gone: closing from the next loop raises "Event loop is closed"
    and the sockets linger until garbage collection. The one call asyncio makes at the end of
    a loop is aclose() on every async generator still open (loop.shutdown_asyncgens(), which
    asyncio.run and asyncio.Runner do), so `close` waits in one. A loop closed without
    shutdown_asyncgens() never runs it; its sockets are left to the garbage collector.
    """
    loop = asyncio.get_running_loop()

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with _pending_lock:
                _pending.pop(generator, None)
            try:
                await close()
            except Exception:
                log.debug("closing a loop-bound client at loop shutdown failed", exc_info=True)

    generator = closer()
    with _pending_lock:
        for stale in [gen for gen, owner in _pending.items() if owner.is_closed()]:
            del _pending[stale]  # its loop ended without shutdown_asyncgens()
        _pending[generator] = loop
    # Starting it is what registers it with the loop (the firstiter hook); it does not await
    # before its yield, so one step runs it there, without a task.
    try:
        generator.asend(None).send(None)
    except StopIteration:
        pass


class PerLoop(Generic[T]):
    """One `make()` per running event loop, from any thread; `close(value)` runs as its loop
    shuts down (see close_with_loop), and the loop's value is forgotten with it."""

    def __init__(self, make: Callable[[], T], close: Callable[[T], Awaitable[object]]) -> None:
        self._make = make
        self._close = close
        self._values: dict[asyncio.AbstractEventLoop, T] = {}
        self._lock = threading.Lock()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            value = self._values.get(loop)
            if value is None:
                for stale in [owner for owner in self._values if owner.is_closed()]:
                    del self._values[stale]  # its loop ended without shutdown_asyncgens()
                value = self._values[loop] = self._make()
                close_with_loop(lambda: self._forget_and_close(loop, value))
        return value

    def pop(self) -> T | None:
        """Forget the running loop's value, if any, and hand it over (to be closed now)."""
        with self._lock:
            return self._values.pop(asyncio.get_running_loop(), None)

    async def _forget_and_close(self, loop: asyncio.AbstractEventLoop, value: T) -> None:
        with self._lock:
            if self._values.get(loop) is value:
                del self._values[loop]
        await self._close(value)
