"""Behind PgBouncer in transaction pooling mode, as clusters with many replicas run: the API
through a real PgBouncer the test starts, LISTEN and migrations straight to PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.bodies import entry_body
from tests.cluster import replicas
from tests.conftest import TEST_KEY, TEST_KEY_ID
from tests.local_server import LocalKeychainServer, free_port

BODY = entry_body({"value": "sk-pooled"})

pytestmark = pytest.mark.skipif(
    shutil.which("pgbouncer") is None,
    reason="pgbouncer is not installed (Debian package pgbouncer)",
)


def _run_as() -> str | None:
    """PgBouncer refuses to run as root: the embedded PostgreSQL's own user (whose socket
    directory it must reach), else nobody."""
    if os.geteuid() != 0:
        return None
    for user in ("pgserver", "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            continue
    pytest.skip("running as root, and there is no user to run PgBouncer as")


@pytest.fixture
def pgbouncer(own_database: str) -> Iterator[str]:
    """A transaction-pooling PgBouncer in front of the test's database; yields its URL."""
    backend = make_url(own_database)
    host = backend.query.get("host") or backend.host or "127.0.0.1"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="keychain-pgbouncer-"))
    (workdir / "userlist.txt").write_text(f'"{backend.username}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"keychain = host={host} port={backend.port or 5432} dbname={backend.database} user={backend.username}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {workdir}/userlist.txt\n"
        # Fewer server connections than clients: transactions really share them.
        "pool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 200\n"
        f"logfile = {workdir}/pgbouncer.log\n"
    )
    user = _run_as()
    if user is not None:
        shutil.chown(workdir, user)
        for path in workdir.iterdir():
            shutil.chown(path, user)
    process = subprocess.Popen(["pgbouncer", str(workdir / "pgbouncer.ini")], user=user)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (workdir / "pgbouncer.log").read_text()
                assert time.monotonic() < deadline, "PgBouncer did not start"
                time.sleep(0.05)
        yield f"postgresql://{backend.username}@127.0.0.1:{port}/keychain"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pooled_replicas(
    pgbouncer: str, own_database: str, tmp_path: Path
) -> Iterator[list[LocalKeychainServer]]:
    # `keychain migrate` (each server runs it first) goes to PostgreSQL directly.
    settings = dict(
        direct_database_url=own_database,
        database_transaction_pooler="true",
        sweep_interval_seconds="1",
    )
    with replicas(pgbouncer, tmp_path, 2, **settings) as servers:
        yield servers


def test_the_api_works_through_a_transaction_pooler(pooled_replicas):
    a, b = pooled_replicas

    def cycle(i: int) -> list[int]:
        with httpx.Client(timeout=10) as http:
            key = f"{a.url if i % 2 else b.url}/api/auth-cache/k{i}:{i}"
            return [
                http.post(key, json={**BODY, "execution_id": i}).status_code,
                http.get(key).status_code,
                http.get(f"{key}-missing").status_code,
                http.delete(key).status_code,
                http.get(key).status_code,
            ]

    with ThreadPoolExecutor(16) as pool:  # far more clients than the pooler's 2 server connections
        answers = list(pool.map(cycle, range(64)))
    assert answers == [[200, 200, 404, 204, 404]] * 64


def test_replicas_behind_the_pooler_hear_each_others_changes(pooled_replicas):
    a, b = pooled_replicas
    assert httpx.post(f"{a.url}/api/auth-cache/shared:global", json=BODY).status_code == 200
    for _ in range(2):  # the write's own notification may drop b's first fill
        assert httpx.get(f"{b.url}/api/auth-cache/shared:global").status_code == 200
        time.sleep(0.2)
    assert httpx.delete(f"{a.url}/api/auth-cache/shared:global").status_code == 204
    deadline = time.monotonic() + 2
    while httpx.get(f"{b.url}/api/auth-cache/shared:global").status_code != 404:
        assert time.monotonic() < deadline, "replica b kept serving a deleted entry"
        time.sleep(0.01)


async def test_a_coordinated_fill_works_through_the_pooler(pooled_replicas):
    a, b = pooled_replicas
    async with httpx.AsyncClient(timeout=15) as http:
        key = "/api/auth-cache/filled:7"
        lease = (await http.get(f"{a.url}{key}", params={"fill_wait": 5})).headers[
            "keychain-fill-lease"
        ]
        waiter = asyncio.ensure_future(http.get(f"{b.url}{key}", params={"fill_wait": 5}))
        await asyncio.sleep(0.3)
        written = await http.post(
            f"{a.url}{key}",
            json={**BODY, "execution_id": 7},
            headers={"Keychain-Fill-Lease": lease},
        )
        assert written.status_code == 200
        assert (await waiter).status_code == 200


def test_a_pooler_without_a_direct_url_is_refused_at_start(pgbouncer, tmp_path):
    server = LocalKeychainServer(
        tmp_path / "server",
        database_url=pgbouncer,
        database_transaction_pooler="true",
        encryption_keys=f"{TEST_KEY_ID}:{TEST_KEY}",
        allow_open_api="true",
    )
    with pytest.raises(RuntimeError, match="KEYCHAIN_DIRECT_DATABASE_URL"):
        server.start()
    server.stop()
