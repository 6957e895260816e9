"""Helpers shared by the workerlib tests (not fixtures, so importable by name)."""

from __future__ import annotations

import json
from typing import Any

import httpx

BASE_URL = "http://keychain.test"


class ScriptedServer:
    """A throwaway ASGI app that answers from a script and records what it was asked.

    Stands in for a misbehaving Keychain (503s, 429s) or for an OAuth2 token endpoint; it is
    served through httpx.ASGITransport, so the client under test speaks real HTTP semantics.
    """

    def __init__(self, *answers: tuple[int, dict[str, str], Any]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                "body": body,
            }
        )
        index = min(len(self.requests), len(self.answers)) - 1
        status, headers, payload = self.answers[index]
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        raw_headers = [(b"content-type", b"application/json")]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})

    def http_client(self, base_url: str = BASE_URL) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self), base_url=base_url)
