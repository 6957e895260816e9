"""PostgreSQL stopped under a real `keychain serve`: what was in memory is still served, and
nothing else pretends to be a miss."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pgserver
import psutil
import pytest

from tests.bodies import entry_body
from tests.cluster import replicas
from tests.local_server import LocalKeychainServer
from workerlib import KeychainClient, fetch_secret

BODY = entry_body({"value": "sk-outage"})


def stop_postgres(pgdata: Path) -> None:
    """A fast shutdown of an embedded PostgreSQL, as an outage would look."""
    pidfile = pgdata / "postmaster.pid"
    os.kill(int(pidfile.read_text().splitlines()[0]), signal.SIGINT)
    deadline = time.monotonic() + 15
    while pidfile.exists():
        assert time.monotonic() < deadline, "PostgreSQL did not stop"
        time.sleep(0.05)


@pytest.mark.parametrize("serve_from_memory", [True, False])
def test_a_database_outage_keeps_hits_in_memory_and_is_never_a_miss(tmp_path, serve_from_memory):
    setting = "true" if serve_from_memory else "false"
    with LocalKeychainServer(tmp_path / "data", serve_from_memory_during_outage=setting) as server:
        url = f"{server.url}/api/auth-cache"
        assert httpx.post(f"{url}/k:global", json=BODY).status_code == 200
        # Now in memory. The write's own notification comes back to this server too and may
        # drop the first fill; the read after it fills the tier for good.
        for _ in range(2):
            assert httpx.get(f"{url}/k:global").status_code == 200
            time.sleep(0.2)
        stop_postgres(server.data_dir / "postgres")

        hit = httpx.get(f"{url}/k:global")
        if serve_from_memory:
            assert hit.status_code == 200, hit.text
            assert hit.json()["data"] == BODY["token_data"]
        else:
            assert hit.status_code == 503
        for answer in (
            httpx.get(f"{url}/never-written:global"),
            httpx.post(f"{url}/new:global", json=BODY),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/ready").status_code == 503
        assert httpx.get(f"{server.url}/health").status_code == 200


def kill_postgres(pgdata: Path) -> None:
    """PostgreSQL's postmaster SIGKILLed: the next start is a crash recovery."""
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while psutil.pid_exists(pid):
        assert time.monotonic() < deadline, "PostgreSQL did not die"
        time.sleep(0.05)


def start_postgres(pgdata: Path) -> str:
    """Start (or start again) the embedded PostgreSQL in `pgdata`; its URL. This process's
    handle leaves it running when the test ends: whoever started it stops it."""
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    server.ensure_postgres_running()
    return server.get_uri()


class CountingProvider:
    """Stands in for Secret Manager in the outage: fetch_secret must keep getting secrets."""

    def __init__(self) -> None:
        self.calls = 0

    async def access(self, name: str) -> str:
        self.calls += 1
        return "sk-from-the-provider"


def fetch(server: LocalKeychainServer, provider: CountingProvider) -> str:
    keychain = KeychainClient(server.url, retries=0)
    return asyncio.run(
        fetch_secret(
            "projects/1/secrets/s/versions/1", execution_id=9, keychain=keychain, provider=provider
        )
    )


def test_a_postgres_restarted_while_nobody_asked_fails_no_request_after_it(tmp_path):
    # Nothing used the pool during the outage, so nothing found its connections dead: the
    # first requests after the restart must not be handed them.
    with LocalKeychainServer(tmp_path / "data") as server:
        url = f"{server.url}/api/auth-cache"
        committed = {f"k{i}:global": {"value": f"sk-{i}"} for i in range(20)}
        for key, data in committed.items():
            assert httpx.post(f"{url}/{key}", json=entry_body(data)).status_code == 200
        stop_postgres(server.data_dir / "postgres")
        start_postgres(server.data_dir / "postgres")
        for key, data in committed.items():
            answer = httpx.get(f"{url}/{key}")
            assert (answer.status_code, answer.json()["data"]) == (200, data)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An embedded PostgreSQL of the test's own, to stop, kill and start again; its data
    directory and URL."""
    pgdata = tmp_path / "pg"
    url = start_postgres(pgdata)
    try:
        yield pgdata, url
    finally:
        if (pgdata / "postmaster.pid").exists():
            stop_postgres(pgdata)


@pytest.mark.parametrize("outage", [stop_postgres, kill_postgres], ids=["stopped", "killed"])
def test_three_replicas_under_load_ride_out_a_postgres_outage_and_recover_on_their_own(
    postgres, tmp_path, outage
):
    pgdata, url = postgres
    provider = CountingProvider()
    committed = {f"k{i}:global": {"value": f"sk-{i}"} for i in range(30)}
    with replicas(url, tmp_path, 3, sweep_interval_seconds="1") as servers:
        for i, (key, data) in enumerate(committed.items()):
            answer = httpx.post(f"{servers[i % 3].url}/api/auth-cache/{key}", json=entry_body(data))
            assert answer.status_code == 200
        seen: list[tuple[str, int, str]] = []  # (phase, status, detail) of every read
        phase, stop = ["up"], threading.Event()

        def load() -> None:
            with httpx.Client(timeout=5) as http:
                for n in itertools.count():
                    if stop.is_set():
                        return
                    key = f"k{n % len(committed)}:global"
                    answer = http.get(f"{servers[n % 3].url}/api/auth-cache/{key}")
                    seen.append(
                        (
                            phase[0],
                            answer.status_code,
                            answer.text if answer.status_code != 200 else "",
                        )
                    )
                    time.sleep(0.005)

        readers = [threading.Thread(target=load) for _ in range(3)]
        for reader in readers:
            reader.start()
        try:
            time.sleep(0.5)
            phase[0] = "down"
            outage(pgdata)
            time.sleep(1.0)
            for server in servers:
                written = httpx.post(f"{server.url}/api/auth-cache/new:global", json=BODY)
                assert (written.status_code, written.headers["retry-after"]) == (503, "1")
                assert httpx.get(f"{server.url}/ready").status_code == 503
                assert httpx.get(f"{server.url}/health").status_code == 200
                assert fetch(server, provider) == "sk-from-the-provider"  # degraded, never failed
            phase[0] = "restarting"
            start_postgres(pgdata)
            deadline = time.monotonic() + 10
            while any(httpx.get(f"{server.url}/ready").status_code != 200 for server in servers):
                assert time.monotonic() < deadline, "a replica did not recover within 10 s"
                time.sleep(0.1)
            phase[0] = "back"
            time.sleep(1.0)
        finally:
            stop.set()
            for reader in readers:
                reader.join()
        # While PostgreSQL was gone, an entry that exists was served from memory or answered
        # 503, never a miss; once it was back, every read was a hit.
        assert not [s for s in seen if s[1] == 404], [s for s in seen if s[1] == 404][:3]
        assert {status for p, status, _ in seen if p == "down"} <= {200, 503}
        assert {status for p, status, _ in seen if p == "back"} == {200}
        assert sum(1 for p, _, _ in seen if p == "back") > 50
        for key, data in committed.items():  # nothing committed was lost
            answer = httpx.get(f"{servers[0].url}/api/auth-cache/{key}")
            assert (answer.status_code, answer.json()["data"]) == (200, data)
