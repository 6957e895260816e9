"""Loop-bound clients made by workerlib itself are closed when their event loop ends.

A worker that runs each task with asyncio.run() gets a new loop per task; the httpx pool and
the gRPC channel of the previous one cannot be used or closed from the new loop, so they are
closed while their own loop shuts down. These tests are synchronous: they run their own loops.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.json_http import serving_json
from tests.secret_manager_emulator import SecretManagerEmulator
from workerlib import GoogleSecretManagerProvider
from workerlib import client as client_module

NAME = "projects/123/secrets/openai-api-key/versions/1"


@pytest.fixture
def keychain_url() -> Iterator[str]:
    """A Keychain that misses every key, over real HTTP."""
    with serving_json(lambda *_: (404, {"status_code": 404, "detail": "no live entry"})) as url:
        yield url


def test_each_loops_default_client_is_closed_as_that_loop_ends(
    keychain_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYCHAIN_SERVER_URL", keychain_url)
    client_module.set_default_client(None)

    async def task() -> client_module.KeychainClient:
        keychain = client_module.default_client()
        assert await keychain.get("k:global") is None
        assert client_module.default_client() is keychain  # one client for the loop's life
        assert not keychain._http.is_closed
        return keychain

    first = asyncio.run(task())
    assert first._http.is_closed
    second = asyncio.run(task())
    assert second is not first and second._http.is_closed


def test_threads_with_loops_of_their_own_get_one_default_client_each(
    keychain_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads each running a loop used to rebuild the one process client on every switch
    (2 threads x 100 calls made 58 pools, most never closed)."""
    monkeypatch.setenv("KEYCHAIN_SERVER_URL", keychain_url)
    client_module.set_default_client(None)
    seen: list[client_module.KeychainClient] = []
    turns = threading.Condition()
    calls_made = 0

    async def calls(me: int) -> None:
        nonlocal calls_made
        for _ in range(100):
            with turns:  # the two threads take strict turns: the worst case, every time
                turns.wait_for(lambda: calls_made % 2 == me, timeout=10)
                seen.append(client_module.default_client())
                calls_made += 1
                turns.notify_all()
            await asyncio.sleep(0)
        assert await client_module.default_client().get("k:global") is None

    threads = [threading.Thread(target=asyncio.run, args=(calls(me),)) for me in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(seen) == 200
    clients = {id(c): c for c in seen}
    assert len(clients) == 2  # one per loop
    assert all(c._http.is_closed for c in clients.values())  # each closed as its loop ended
    assert (
        not client_module._default_clients._values
    )  # and forgotten: nothing keeps the loops alive


def test_the_providers_channel_is_closed_as_its_loop_ends() -> None:
    async def task(provider: GoogleSecretManagerProvider) -> Any:
        async with SecretManagerEmulator({NAME: "v"}) as emulator:
            provider.emulator_host = emulator.address
            assert await provider.access(NAME) == "v"
            channel = provider._clients.get().transport.grpc_channel
            assert channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN
            return channel

    provider = GoogleSecretManagerProvider(emulator_host="unused:1")
    first = asyncio.run(task(provider))
    assert first.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    second = asyncio.run(task(provider))
    assert second is not first and second.get_state() == grpc.ChannelConnectivity.SHUTDOWN


def test_an_explicit_close_before_the_loop_ends_is_fine() -> None:
    async def task() -> Any:
        async with SecretManagerEmulator({NAME: "v"}) as emulator:
            provider = GoogleSecretManagerProvider(emulator_host=emulator.address)
            assert await provider.access(NAME) == "v"
            channel = provider._clients.get().transport.grpc_channel
            await provider.close()
            return channel

    assert asyncio.run(task()).get_state() == grpc.ChannelConnectivity.SHUTDOWN


def test_a_client_in_use_on_a_running_loop_is_not_closed_early() -> None:
    """The closer is held until its loop ends; garbage collection must not run it sooner."""

    async def task() -> bool:
        keychain = client_module.default_client()
        gc.collect()
        await asyncio.sleep(0)
        return keychain._http.is_closed

    client_module.set_default_client(None)
    assert asyncio.run(task()) is False
