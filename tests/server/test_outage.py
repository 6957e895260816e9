"""PostgreSQL stopped under a real `keychain serve`: what was in memory is still served, and
nothing else pretends to be a miss."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pgserver
import psutil
import pytest

from demo.local_server import LocalKeychainServer
from workerlib import KeychainClient, fetch_secret

BODY = {"token_data": {"value": "sk-outage"}, "credential_type": "bearer"}


def stop_postgres(server: LocalKeychainServer) -> None:
    """A fast shutdown of the server's embedded PostgreSQL, as an outage would look."""
    pidfile = server.data_dir / "postgres" / "postmaster.pid"
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
        stop_postgres(server)

        hit = httpx.get(f"{url}/k:global")
        if serve_from_memory:
            assert hit.status_code == 200, hit.text
            assert hit.json()["data"] == BODY["token_data"]
        else:
            assert hit.status_code == 503
        for answer in (httpx.get(f"{url}/never-written:global"), httpx.post(f"{url}/new:global", json=BODY)):
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/ready").status_code == 503
        assert httpx.get(f"{server.url}/health").status_code == 200


def kill_postgres(server: LocalKeychainServer) -> None:
    """PostgreSQL's postmaster SIGKILLed: the next start is a crash recovery."""
    pid = int((server.data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while psutil.pid_exists(pid):
        assert time.monotonic() < deadline, "PostgreSQL did not die"
        time.sleep(0.05)


def start_postgres_again(server: LocalKeychainServer) -> None:
    # This process's handle leaves the server running when the test ends; server.stop() stops it.
    pgserver.get_server(server.data_dir / "postgres", cleanup_mode=None).ensure_postgres_running()


class CountingProvider:
    """Stands in for Secret Manager in the outage: fetch_secret must keep getting secrets."""

    def __init__(self) -> None:
        self.calls = 0

    async def access(self, name: str) -> str:
        self.calls += 1
        return "sk-from-the-provider"


@pytest.mark.parametrize(("outage", "asked_meanwhile"), [(stop_postgres, True), (kill_postgres, True), (stop_postgres, False)], ids=["stopped", "killed", "stopped-quietly"])
def test_every_request_recovers_on_its_own_once_postgres_is_back(tmp_path, outage, asked_meanwhile):
    provider = CountingProvider()

    def fetch(server: LocalKeychainServer) -> str:
        keychain = KeychainClient(server.url, retries=0)
        return asyncio.run(fetch_secret("projects/1/secrets/s/versions/1", execution_id=9, client=keychain, provider=provider))

    with LocalKeychainServer(tmp_path / "data") as server:
        url = f"{server.url}/api/auth-cache"
        committed = {f"k{i}:global": {"value": f"sk-{i}"} for i in range(20)}
        for key, data in committed.items():
            assert httpx.post(f"{url}/{key}", json={**BODY, "token_data": data}).status_code == 200
        assert fetch(server) == "sk-from-the-provider"

        outage(server)
        if asked_meanwhile:
            assert fetch(server) == "sk-from-the-provider"  # degraded, never failed
            assert httpx.get(f"{server.url}/ready").status_code == 503

        start_postgres_again(server)
        # From the first request on (no /ready first, which would use up stale connections): a
        # pooled connection to the PostgreSQL that went away is never handed to a request.
        for key, data in committed.items():
            answer = httpx.get(f"{url}/{key}")
            assert (answer.status_code, answer.json()["data"]) == (200, data)
        assert httpx.get(f"{url}/never-written:global").status_code == 404
        assert httpx.post(f"{url}/after:global", json=BODY).status_code == 200
        assert fetch(server) == "sk-from-the-provider"
        assert httpx.get(f"{server.url}/ready").status_code == 200
    assert provider.calls == (2 if asked_meanwhile else 1)  # the cached one served after
