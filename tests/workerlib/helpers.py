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


# Every way the cache can fail other than being down, as (status, headers, body, error class,
# text of the server's detail that the log must carry). 429 asks for a wait longer than the
# client will give it, so it is not retried.
CACHE_FAILURES = [
    (401, {}, {"status_code": 401, "detail": "a bearer token is required"}, "Unauthorized", "a bearer token is required"),
    (403, {}, {"status_code": 403, "detail": "role reader may not write"}, "Forbidden", "role reader may not write"),
    (429, {"Retry-After": "120"}, {"status_code": 429, "detail": "slow down"}, "RateLimited", "slow down"),
    (418, {}, {"status_code": 418, "detail": "I'm a teapot"}, "KeychainAPIError", "I'm a teapot"),
    (200, {}, {"unexpected": "shape"}, "KeychainError", "unexpected answer"),
    (200, {}, b"<html>a proxy page</html>", "KeychainError", "unexpected answer"),
]
CACHE_FAILURE_IDS = ["401", "403", "429", "418", "200-wrong-shape", "200-not-json"]
MISS = (404, {}, {"status_code": 404, "detail": "no live entry"})
