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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from demo.secret_manager_emulator import SecretManagerEmulator
from workerlib import GoogleSecretManagerProvider
from workerlib import client as client_module

NAME = "projects/123/secrets/openai-api-key/versions/1"


class _Miss(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the pool really holds a connection

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = b'{"status_code": 404, "detail": "no live entry"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def keychain_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Miss)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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


def test_the_providers_channel_is_closed_as_its_loop_ends() -> None:
    async def task(provider: GoogleSecretManagerProvider) -> Any:
        async with SecretManagerEmulator({NAME: "v"}) as emulator:
            provider.emulator_host = emulator.address
            assert await provider.access(NAME) == "v"
            channel = provider._client.transport.grpc_channel
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
            channel = provider._client.transport.grpc_channel
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
