"""The event loop a connection pool or gRPC channel belongs to."""

from __future__ import annotations

import asyncio

from workerlib.errors import WrongEventLoop


class LoopBinding:
    """The loop of the first use; a use on another loop raises WrongEventLoop with `advice`
    (the pool's connections cannot serve there), until release() lets the next use bind."""

    def __init__(self, advice: str) -> None:
        self._advice = advice
        self._loop: asyncio.AbstractEventLoop | None = None

    def check(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise WrongEventLoop(self._advice)

    def release(self) -> None:
        self._loop = None
