"""Close a loop-bound resource (an httpx pool, a gRPC channel) when its event loop shuts down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

log = logging.getLogger(__name__)

# Strong references until they have run: a collected generator would be closed at once by the
# loop's finalizer hook, closing a resource that is still in use.
_pending: dict[AsyncGenerator[None, None], asyncio.AbstractEventLoop] = {}


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
    for stale in [gen for gen, owner in _pending.items() if owner.is_closed()]:
        del _pending[stale]  # its loop ended without shutdown_asyncgens()

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            _pending.pop(generator, None)
            try:
                await close()
            except Exception:  # noqa: BLE001 - shutting down; nothing left to do about it
                log.debug("closing a loop-bound client at loop shutdown failed", exc_info=True)

    generator = closer()
    _pending[generator] = loop
    # Starting it is what registers it with the loop (the firstiter hook); it does not await
    # before its yield, so one step runs it there, without a task.
    try:
        generator.asend(None).send(None)
    except StopIteration:
        pass
