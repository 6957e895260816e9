"""Fixtures for workerlib: a KeychainClient on the real app, the Secret Manager emulator with
the real google-cloud-secret-manager client, a closed port and a silent one."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import pytest_asyncio

from tests.cluster import replicas
from tests.conftest import BASE_URL, free_port
from tests.secret_manager_emulator import SecretManagerEmulator
from workerlib.client import KeychainClient
from workerlib.providers import GoogleSecretManagerProvider


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def secret_manager_server() -> AsyncIterator[SecretManagerEmulator]:
    # A little latency so concurrent callers really overlap; no assertion depends on it.
    async with SecretManagerEmulator(latency=0.02) as emulator:
        yield emulator


@pytest.fixture
def secret_manager(secret_manager_server: SecretManagerEmulator) -> Iterator[SecretManagerEmulator]:
    """The emulator with an empty call counter and no secrets."""
    secret_manager_server.reset_calls()
    secret_manager_server.clear()
    yield secret_manager_server
    secret_manager_server.clear()


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


@pytest.fixture(scope="module")
def keychain_server(
    make_empty_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of a real `keychain serve` on a database of its own, shared by a module's tests:
    for what builds its client from KEYCHAIN_SERVER_URL (CredentialCache), which no in-process
    transport can reach. Entries persist between the module's tests: each uses its own names."""
    with replicas(make_empty_database(), tmp_path_factory.mktemp("keychain-server"), 1) as (
        server,
    ):
        yield server.url


@pytest.fixture
def keychain_from_env(keychain_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """KEYCHAIN_SERVER_URL names the real server (open API: no token needed)."""
    monkeypatch.setenv("KEYCHAIN_SERVER_URL", keychain_server)
    monkeypatch.delenv("KEYCHAIN_API_TOKEN", raising=False)
    return keychain_server


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening."""
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 where connecting hangs, like a server whose packets are dropped.

    The listener never accepts and its queue is already full, so the kernel ignores new SYNs
    instead of refusing them: the local stand-in for a host that has silently gone away.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest_asyncio.fixture(loop_scope="session")
async def down_keychain(closed_port: int) -> AsyncIterator[KeychainClient]:
    """A client whose server is not running; quick retries keep the tests short."""
    async with KeychainClient(
        base_url=f"http://127.0.0.1:{closed_port}", retries=1, backoff=0.01
    ) as keychain:
        yield keychain


@pytest.fixture(autouse=True)
def _plain_http_idp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process token endpoint (helpers.IDP_URL) is plain http: allowed the way an
    operator allows an IdP on a trusted network. Tests of the refusal remove it."""
    monkeypatch.setenv("KEYCHAIN_OAUTH_INSECURE_HOSTS", "idp.test")
