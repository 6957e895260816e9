"""Fixtures for workerlib: a KeychainClient on the real app, the Secret Manager emulator with
the real google-cloud-secret-manager client, a closed port, and tiny scripted HTTP servers."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from demo.secret_manager_emulator import SecretManagerEmulator
from workerlib import client as client_module
from workerlib import providers as providers_module
from workerlib.client import KeychainClient
from workerlib.compat import CredentialCache
from workerlib.providers import GoogleSecretManagerProvider

BASE_URL = "http://keychain.test"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def secret_manager_server() -> AsyncIterator[SecretManagerEmulator]:
    # A little latency so concurrent callers really overlap; no assertion depends on it.
    async with SecretManagerEmulator(latency=0.02) as emulator:
        yield emulator


@pytest.fixture
def secret_manager(secret_manager_server: SecretManagerEmulator) -> Iterator[SecretManagerEmulator]:
    """The emulator with an empty call counter and no secrets."""
    secret_manager_server.reset_calls()
    secret_manager_server.secrets.clear()
    yield secret_manager_server
    secret_manager_server.secrets.clear()


@pytest_asyncio.fixture(loop_scope="session")
async def provider(
    secret_manager: SecretManagerEmulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[GoogleSecretManagerProvider]:
    """The real Secret Manager client, pointed at the emulator the way workers are configured."""
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", secret_manager.address)
    provider = GoogleSecretManagerProvider()
    yield provider
    await provider.close()


@pytest_asyncio.fixture(loop_scope="session")
async def keychain(client: httpx.AsyncClient) -> AsyncIterator[KeychainClient]:
    async with KeychainClient(base_url=BASE_URL, http_client=client) as keychain:
        yield keychain


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest_asyncio.fixture(loop_scope="session")
async def down_keychain(closed_port: int) -> AsyncIterator[KeychainClient]:
    """A client whose server is not running; quick retries keep the tests short."""
    async with KeychainClient(base_url=f"http://127.0.0.1:{closed_port}", retries=1, backoff=0.01) as keychain:
        yield keychain


@pytest.fixture(autouse=True)
def _no_process_defaults() -> Iterator[None]:
    """Process-wide defaults (client, provider, CredentialCache's client) never leak between tests."""
    saved = (client_module._default_client, client_module._default_loop, providers_module._default_provider)
    yield
    client_module._default_client, client_module._default_loop, providers_module._default_provider = saved
    CredentialCache.use_client(None)


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
