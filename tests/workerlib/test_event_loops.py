"""A KeychainClient (and a GoogleSecretManagerProvider) belongs to the event loop it is first
used on: a worker makes one per loop, inside `async with`, so that it is closed before its loop
ends. Used from another loop it says so (WrongEventLoop) instead of failing somewhere in httpx.
CredentialCache makes a client per call, so it works from any loop; the provider the operator
configured belongs to the client whose misses it serves, and closes with it. These tests are
synchronous: they run their own loops, over real HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.secret_manager_emulator import SecretManagerEmulator
from workerlib import CredentialCache, KeychainClient, fetch_secret
from workerlib.errors import WrongEventLoop
from workerlib.providers import GoogleSecretManagerProvider

NAME = "projects/123/secrets/openai-api-key/versions/1"


@pytest.fixture
def keychain_url(keychain_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real `keychain serve` (open API), shared by the module's tests: entries written here
    persist between them, so each test uses names of its own."""
    monkeypatch.delenv("KEYCHAIN_API_TOKEN", raising=False)
    return keychain_server


@contextmanager
def nothing_left_behind(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No unclosed socket or channel (ResourceWarning), no exception from a finalizer, and no
    "Event loop is closed" from asyncio, once the garbage is collected."""
    unraisable: list[Any] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.ERROR):
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        sys.unraisablehook = previous_hook
    assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert [u.exc_value for u in unraisable] == []
    assert "Event loop is closed" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def in_threads(main: Callable[[], Coroutine[Any, Any, None]], count: int = 1) -> None:
    """asyncio.run(main()) in `count` threads at once, each its own loop; re-raises a failure."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    if errors:
        raise errors[0]


def test_a_client_per_asyncio_run_each_closed_by_async_with(
    keychain_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def task() -> KeychainClient:
        async with KeychainClient(keychain_url) as keychain:
            assert await keychain.get("k:global") is None
            assert await keychain.get("k:global") is None  # the same pool, kept alive
        return keychain

    with nothing_left_behind(caplog):
        first = asyncio.run(task())
        second = asyncio.run(task())
    assert second is not first


def test_a_client_used_from_another_loop_says_so(
    keychain_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its pool belongs to the loop it was first used on, which is still running here (another
    thread's): a call from this loop would otherwise share its connections across loops."""
    keychain = KeychainClient(keychain_url)
    used, done = threading.Event(), threading.Event()

    async def owner() -> None:
        async with keychain:
            assert await keychain.get("k:global") is None
            used.set()
            await asyncio.to_thread(done.wait, 10)

    async def intruder() -> None:
        with pytest.raises(WrongEventLoop, match="make a KeychainClient per loop"):
            await keychain.get("k:global")
        # Its with_token() copies share the pool, and so the loop.
        with pytest.raises(WrongEventLoop):
            await keychain.with_token("another-token").get("k:global")

    with nothing_left_behind(caplog):
        thread = threading.Thread(target=asyncio.run, args=(owner(),))
        thread.start()
        try:
            assert used.wait(10)
            asyncio.run(intruder())
        finally:
            done.set()
            thread.join(10)


def test_threads_with_loops_of_their_own_each_use_a_client_of_their_own(
    keychain_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def calls() -> None:
        async with KeychainClient(keychain_url) as keychain:
            for _ in range(50):
                assert await keychain.get("k:global") is None

    with nothing_left_behind(caplog):
        in_threads(calls, 2)


def test_credential_cache_works_from_any_loop_and_thread(
    keychain_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It builds a client per call from the environment, so no loop's client meets another loop."""
    monkeypatch.setenv("KEYCHAIN_SERVER_URL", keychain_url)

    executions = itertools.count(1)

    async def task() -> None:
        execution_id = next(executions)
        assert await CredentialCache.get_cached("svc", execution_id=execution_id) is None
        assert await CredentialCache.set_cached(
            "svc", "bearer", {"t": "x"}, execution_id=execution_id
        )
        cached = await CredentialCache.get_cached("svc", execution_id=execution_id)
        assert cached is not None and cached["data"] == {"t": "x"}

    with nothing_left_behind(caplog):
        asyncio.run(task())
        asyncio.run(task())
        in_threads(task, 2)


def test_the_configured_provider_serves_a_clients_misses_and_closes_with_it(
    keychain_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    executions = itertools.count(101)

    async def task() -> list[str]:
        async with (
            SecretManagerEmulator({NAME: "v"}) as emulator,
            KeychainClient(keychain_url) as keychain,
        ):
            monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", emulator.address)
            # Misses both: executions of their own.
            values = [await fetch_secret(NAME, execution_id=next(executions), keychain=keychain)]
            provider = keychain.configured_provider()
            values.append(
                await fetch_secret(NAME, execution_id=next(executions), keychain=keychain)
            )
            # One channel for all of the client's misses, its with_token() copies' included.
            assert keychain.configured_provider() is provider
            assert keychain.with_token("execution-token").configured_provider() is provider
            return values

    monkeypatch.delenv("KEYCHAIN_SECRET_PROVIDER", raising=False)
    with nothing_left_behind(caplog):  # the channel closed with each client, on its own loop
        assert asyncio.run(task()) == ["v", "v"]
        assert asyncio.run(task()) == ["v", "v"]


def test_a_provider_belongs_to_its_loop_until_closed(caplog: pytest.LogCaptureFixture) -> None:
    provider = GoogleSecretManagerProvider(emulator_host="unused:1")

    async def access() -> str:
        async with SecretManagerEmulator({NAME: "v"}) as emulator:
            provider.emulator_host = emulator.address
            return await provider.access(NAME)

    async def access_and_close() -> str:
        async with provider:
            return await access()

    with nothing_left_behind(caplog):
        assert asyncio.run(access_and_close()) == "v"
        assert asyncio.run(access_and_close()) == "v"  # closed with its loop: a new channel

        async def two_loops() -> None:
            assert await access() == "v"
            # Another loop while this one still holds the channel: refused, with the fix.
            with pytest.raises(WrongEventLoop, match="make a provider per loop"):
                await asyncio.to_thread(asyncio.run, access())
            await provider.close()

        asyncio.run(two_loops())
