"""Single flight: concurrent callers for one key share one in-flight load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

# (event loop, key) -> the task loading it. A task belongs to its loop, so the loop is part of
# the key; the entry goes as soon as the task finishes, so a later call starts afresh. Keys may
# hold id()s of the objects the load uses: the task keeps them alive, so no id is reused while
# its entry is here.
_inflight: dict[tuple[int, Hashable], asyncio.Task[Any]] = {}


def _drop(key: tuple[int, Hashable], task: asyncio.Task[Any]) -> None:
    if _inflight.get(key) is task:
        del _inflight[key]
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" if every caller left


async def single_flight(
    key: Hashable,
    load: Callable[[], Coroutine[Any, Any, T]],
    start: Callable[[Coroutine[Any, Any, T]], asyncio.Task[T]],
) -> T:
    """Run `load()` once for all concurrent callers with this key and give each the result.

    The load runs in its own task, made by `start` (its owner's, which waits for it when it
    closes), shielded: one caller being cancelled (a step timing out) does not cancel the load
    the other callers are waiting for.
    """
    loop = asyncio.get_running_loop()
    flight_key = (id(loop), key)
    task = _inflight.get(flight_key)
    if task is None:
        task = start(load())
        _inflight[flight_key] = task
        task.add_done_callback(lambda t: _drop(flight_key, t))
    return await asyncio.shield(task)
