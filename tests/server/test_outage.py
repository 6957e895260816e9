"""PostgreSQL stopped under a real `keychain serve`: what was in memory is still served, and
nothing else pretends to be a miss."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from demo.local_server import LocalKeychainServer

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
