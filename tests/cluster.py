"""Several real `keychain serve` processes on one database, and a round-robin TCP proxy in front
of them as a Kubernetes Service would be: each new connection goes to the next replica.

The servers and the proxy listen on 127.0.0.1 only. The proxy is bounded: at most
`max_connections` at once (more are closed at once), a connect timeout, and an idle timeout on
every read, so a stuck peer can never keep a test waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_KEY, TEST_KEY_ID
from tests.local_server import LocalKeychainServer

# For clients of the proxy: one request per connection, so that requests are spread.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)
CONNECT_TIMEOUT_S = 5.0
# How long a closing proxy lets the connections it carries finish before it cuts them.
CLOSE_GRACE_S = 2.0
CHUNK = 64 * 1024


@contextmanager
def replicas(
    database_url: str, data_root: Path, count: int, **settings: str
) -> Iterator[list[LocalKeychainServer]]:
    """`count` servers on `database_url`, started at once as a Deployment's pods are, and
    stopped with SIGTERM at the end. Each first runs `keychain migrate` (LocalKeychainServer
    does), which on a migrated database changes nothing. `settings` are more KEYCHAIN_*
    settings by field name."""
    servers = [
        LocalKeychainServer(
            data_root / f"replica-{i}",
            database_url=database_url,
            encryption_keys=f"{TEST_KEY_ID}:{TEST_KEY}",
            allow_open_api="true",
            **settings,
        )
        for i in range(count)
    ]
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            # result() re-raises a failed start here, with the server's log tail in it.
            for started in [pool.submit(server.start) for server in servers]:
                started.result()
        yield servers
    finally:
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(lambda server: server.stop(), servers))


def plain_dsn(url: str) -> str:
    """The database URL for asyncpg itself, which knows no SQLAlchemy driver names."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one replica's GET /metrics, keyed by (name, labels)."""
    answer = httpx.get(f"{url}/metrics", timeout=5)
    answer.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """A sample's value; a labelled counter never moved is absent, which is 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


class RoundRobinProxy:
    """A TCP proxy on 127.0.0.1 that sends each new connection to the next backend in turn.

    It runs its own event loop in a thread, so blocking test code cannot stall it. Clients
    that want their requests spread must not keep connections alive (one request, one
    connection), as behind a Service without session affinity."""

    def __init__(
        self, backends: list[str], *, max_connections: int = 64, idle_timeout: float = 10.0
    ) -> None:
        """`backends` are base URLs such as http://127.0.0.1:8082."""
        self.backends = [httpx.URL(url) for url in backends]
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        # Connections handed to each backend, in the order of `backends`.
        self.connections = [0] * len(backends)
        self.port = 0
        self._next = itertools.cycle(range(len(backends)))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="round-robin-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # Both ends of every relayed connection, so that closing can cut them.
        self._streams: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(
            CONNECT_TIMEOUT_S
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(
            CLOSE_GRACE_S + CONNECT_TIMEOUT_S
        )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONNECT_TIMEOUT_S)
        self._loop.close()

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=CLOSE_GRACE_S)
        # Closed rather than cancelled: a relay whose streams end finishes on its own.
        for stream in self._streams:
            stream.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= self.max_connections:
            client_writer.close()
            return
        self._handlers.add(task)
        self._streams.add(client_writer)
        try:
            await self._relay(client_reader, client_writer)
        finally:
            self._handlers.discard(task)
            self._streams.discard(client_writer)
            client_writer.close()

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        index = next(self._next)
        self.connections[index] += 1
        backend = self.backends[index]
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.port), CONNECT_TIMEOUT_S
            )
        except (TimeoutError, OSError):
            return  # as a Service with a dead endpoint: the client sees its connection closed
        self._streams.add(upstream_writer)
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer),
                self._pipe(upstream_reader, client_writer),
            )
        finally:
            self._streams.discard(upstream_writer)
            upstream_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy until end of stream (passed on as a half-close), an error or `idle_timeout`."""
        try:
            while chunk := await asyncio.wait_for(reader.read(CHUNK), self.idle_timeout):
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (TimeoutError, OSError):
            writer.close()
