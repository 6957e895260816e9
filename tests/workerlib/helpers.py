"""Helpers shared by the workerlib tests (not fixtures, so importable by name)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from tests.conftest import BASE_URL
from workerlib import KeychainClient, SecretProvider, resolve_auth
from workerlib.models import Entry

IDP_URL = "http://idp.test"


class ScriptedServer:
    """A throwaway ASGI app that answers from a script and records what it was asked.

    Stands in for a misbehaving Keychain (503s, 429s) or for an OAuth2 token endpoint; it is
    served through httpx.ASGITransport, so the client under test speaks real HTTP semantics.
    """

    def __init__(self, *answers: tuple[int, dict[str, str], Any], delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.delay = delay  # before each answer, as a real endpoint takes its time

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
        await asyncio.sleep(self.delay)
        index = min(len(self.requests), len(self.answers)) - 1
        status, headers, payload = self.answers[index]
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        raw_headers = [(b"content-type", b"application/json")]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})

    def http_client(self, base_url: str = BASE_URL) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self), base_url=base_url)


def entry_body(
    cache_key: str, data: dict[str, Any], *, execution_id: int | None = None, **fields: Any
) -> dict[str, Any]:
    """A cached entry as the server answers a GET; `fields` override the defaults."""
    return {
        "cache_key": cache_key,
        "credential_name": cache_key.split(":", 1)[0],
        "credential_type": "t",
        "cache_type": "secret",
        "scope_type": "global" if execution_id is None else "execution",
        "execution_id": execution_id,
        "parent_execution_id": None,
        "ttl_seconds": 3600,
        "expires_at": "2030-01-01T00:00:00Z",
        "created_at": "2029-12-31T23:00:00Z",
        "accessed_at": "2029-12-31T23:30:00Z",
        "access_count": 1,
        "data": data,
        **fields,
    }


def too_deep_entry(depth: int = 5000) -> bytes:
    """An entry (GET or POST answer alike) whose data is nested deeper than Python's stack:
    decoding it raises RecursionError, not a DecodeError."""
    body = json.dumps(entry_body("deep:global", {"deep": "NESTING"})).encode()
    return body.replace(b'"NESTING"', b"[" * depth + b"]" * depth)


# Every way the cache can fail other than being down, as (status, headers, body, error class,
# text of the server's detail that the log must carry). 429 asks for a wait longer than the
# client will give it, so it is not retried.
CACHE_FAILURES = [
    (
        401,
        {},
        {"status_code": 401, "detail": "a bearer token is required"},
        "Unauthorized",
        "a bearer token is required",
    ),
    (
        403,
        {},
        {"status_code": 403, "detail": "role reader may not write"},
        "Forbidden",
        "role reader may not write",
    ),
    (
        429,
        {"Retry-After": "120"},
        {"status_code": 429, "detail": "slow down"},
        "RateLimited",
        "slow down",
    ),
    (418, {}, {"status_code": 418, "detail": "I'm a teapot"}, "KeychainAPIError", "I'm a teapot"),
    (200, {}, {"unexpected": "shape"}, "KeychainError", "unexpected answer"),
    (200, {}, b"<html>a proxy page</html>", "KeychainError", "unexpected answer"),
    (200, {}, too_deep_entry(), "KeychainError", "maximum recursion depth"),
]
CACHE_FAILURE_IDS = [
    "401",
    "403",
    "429",
    "418",
    "200-wrong-shape",
    "200-not-json",
    "200-nested-too-deep",
]
MISS = (404, {}, {"status_code": 404, "detail": "no live entry"})


def token_endpoint(
    expires_in: int = 3600, access_token: str = "at-first", delay: float = 0.0
) -> ScriptedServer:
    """An OAuth2 token endpoint: `access_token` first, then "at-second"."""
    return ScriptedServer(
        (200, {}, {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in}),
        (200, {}, {"access_token": "at-second", "token_type": "Bearer", "expires_in": expires_in}),
        delay=delay,
    )


async def cached_oauth_tokens(keychain: KeychainClient, name: str) -> dict[str, Entry]:
    """The OAuth2 tokens cached for credential `name`, by key; each key must be
    `{name}:global:oauth2:` and a hex digest of what the token is."""
    page = await keychain.list_entries(credential_name=name, scope_type="global")
    tokens = {}
    for item in page.items:
        assert re.fullmatch(rf"{re.escape(name)}:global:oauth2:[0-9a-f]{{32}}", item.cache_key), (
            item.cache_key
        )
        entry = await keychain.get(item.cache_key)
        assert entry is not None
        tokens[item.cache_key] = entry
    return tokens


async def resolve_in_two_executions(
    auth: Mapping[str, Mapping[str, Any]],
    idp: ScriptedServer,
    keychain: KeychainClient,
    provider: SecretProvider,
) -> list[dict[str, str]]:
    """resolve_auth for executions 1 then 2, the token endpoint at IDP_URL; each one's headers."""
    async with idp.http_client(IDP_URL) as http:
        return [
            await resolve_auth(
                auth,
                execution_id=execution_id,
                keychain=keychain,
                providers={"secret_manager": provider},
                http_client=http,
            )
            for execution_id in (1, 2)
        ]


def assert_logged_degraded(
    caplog: pytest.LogCaptureFixture, status: int, error_class: str, detail: str, *hidden: str
) -> None:
    """workerlib logged the cache failure as degraded, at the right level, without `hidden`."""
    records = [
        r
        for r in caplog.records
        if r.name.startswith("workerlib") and getattr(r, "degraded", False)
    ]
    assert records, caplog.text
    message = records[0].getMessage()
    assert "degraded" in message and error_class in message and detail in message
    if status in (401, 403):
        # A wrong token silently disables the cache for every worker: say so loudly.
        assert records[0].levelno == logging.ERROR and "KEYCHAIN_API_TOKEN" in message
    else:
        assert records[0].levelno == logging.WARNING
    for value in hidden:
        assert value not in caplog.text
        assert all(value not in repr(r.__dict__) for r in caplog.records)


# Settings the process-default client cannot be built from, as (variable, value): the value
# must never reach a log.
UNUSABLE_SETTINGS = [
    ("KEYCHAIN_API_TOKEN", "tök-0123456789abcdef"),
    ("KEYCHAIN_SERVER_URL", "tok-pasted-here-0000"),
]
UNUSABLE_SETTING_IDS = ["token-non-ascii", "url-not-a-url"]


def assert_logged_unusable_configuration(
    caplog: pytest.LogCaptureFixture, variable: str, value: str
) -> None:
    """workerlib logged, at ERROR and marked degraded, which setting it could not use, not its value."""
    records = [
        r
        for r in caplog.records
        if r.name.startswith("workerlib") and getattr(r, "degraded", False)
    ]
    assert records, caplog.text
    assert all(r.levelno == logging.ERROR for r in records)
    assert "KeychainConfigError" in records[0].getMessage() and variable in records[0].getMessage()
    assert value not in caplog.text and all(value not in repr(r.__dict__) for r in caplog.records)
