"""Remembering the status a response was sent with, for middleware that reports on it.

Plain ASGI: app.metrics uses it and must stay free of the web framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

# Any: the framework's `send` takes its own typed messages, a plain ASGI server's take dicts.
Send = Callable[[Any], Awaitable[None]]


class StatusRecorder:
    """Wraps ASGI `send`; `status` stays 500 if the app fails before sending a response."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
