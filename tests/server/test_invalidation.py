"""The invalidation channel, with real commits: each test has a database of its own.

A cleanup is announced by NOTIFY in its own transaction; every server listens on a dedicated
connection, and an execution token ended on one replica stops working on the others.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app.invalidation import (
    LISTENER_APPLICATION_NAME,
    Invalidation,
    InvalidationListener,
    channel_name,
)
from app.keychain.ended import EndedExecutions
from app.keychain.repository import KeychainRepository
from tests import cluster
from tests.bodies import entry_body
from tests.conftest import TEST_SIGNING_KEYS
from tests.local_server import LocalKeychainServer

ISSUER = "engine-issuer-token-0123456789"


def plain_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def test_a_cleanup_is_announced_only_when_it_commits(committed):
    heard: asyncio.Queue[str] = asyncio.Queue()
    listening = await asyncpg.connect(plain_dsn(committed.url))
    channel = channel_name(committed.settings.db_schema)
    await listening.add_listener(channel, lambda *args: heard.put_nowait(args[-1]))
    database = committed.database
    try:
        with pytest.raises(RuntimeError):
            async with database.transaction() as conn:
                await KeychainRepository(conn).announce(Invalidation(ended_execution_id=1))
                raise RuntimeError("roll back")
        async with database.transaction() as conn:
            await KeychainRepository(conn).announce(Invalidation(ended_execution_id=2))
        assert await asyncio.wait_for(heard.get(), 5) == '{"ended_execution_id":2}'
        await asyncio.sleep(0.2)
        assert heard.empty()  # the rolled-back one never came
    finally:
        await listening.close()


@pytest.fixture
def replicas(own_database, tmp_path):
    """Two real `keychain serve` processes on one database."""
    settings = dict(token_signing_keys=TEST_SIGNING_KEYS, sweep_interval_seconds="0")
    with cluster.replicas(
        own_database, tmp_path, 2, api_tokens=f"engine:issuer:{ISSUER}", **settings
    ) as servers:
        yield servers


def _listeners(url: str) -> list[int]:
    async def pids() -> list[int]:
        conn = await asyncpg.connect(plain_dsn(url))
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
                LISTENER_APPLICATION_NAME,
            )
            return [r["pid"] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(pids())


def _wait_for_listeners(url: str, count: int, not_in: tuple[int, ...] = ()) -> list[int]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pids = [p for p in _listeners(url) if p not in not_in]
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"{count} listeners did not connect")


def _terminate(url: str, pid: int) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(plain_dsn(url))
        try:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()

    asyncio.run(run())


def _mint(server: LocalKeychainServer, execution_id: int) -> str:
    answer = httpx.post(
        f"{server.url}/api/execution-tokens",
        json={"execution_id": execution_id},
        headers={"Authorization": f"Bearer {ISSUER}"},
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def _write_and_read(server: LocalKeychainServer, token: str, execution_id: int) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    body = entry_body({"v": 1}, execution_id=execution_id)
    httpx.post(f"{server.url}/api/auth-cache/k:{execution_id}", json=body, headers=headers)
    return httpx.get(f"{server.url}/api/auth-cache/k:{execution_id}", headers=headers).status_code


def _cleanup(server: LocalKeychainServer, execution_id: int) -> None:
    answer = httpx.delete(
        f"{server.url}/api/executions/{execution_id}/auth-cache",
        headers={"Authorization": f"Bearer {ISSUER}"},
    )
    assert answer.status_code == 200, answer.text


def _seconds_until_refused(server: LocalKeychainServer, token: str, execution_id: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 5:
        answer = httpx.get(
            f"{server.url}/api/auth-cache/k:{execution_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
        if answer.status_code == 401:
            assert "has ended" in answer.json()["detail"]
            return time.monotonic() - started
        assert answer.status_code in (200, 404)
        time.sleep(0.005)
    raise AssertionError("the ended execution's token kept working")


def test_a_cleanup_on_one_replica_ends_the_token_on_the_other(replicas, own_database):
    a, b = replicas
    _wait_for_listeners(own_database, 2)
    token = _mint(a, 42)
    assert _write_and_read(a, token, 42) == 200  # a now knows execution 42 as live
    _cleanup(b, 42)
    assert _seconds_until_refused(a, token, 42) < 1.0


def test_a_replica_whose_listener_is_cut_reconnects_and_hears_the_next_cleanup(
    replicas, own_database
):
    a, b = replicas
    first = _wait_for_listeners(own_database, 2)
    token = _mint(a, 7)
    assert _write_and_read(a, token, 7) == 200
    for pid in first:  # both listeners: whichever is a's
        _terminate(own_database, pid)
    _wait_for_listeners(own_database, 2, not_in=tuple(first))
    _cleanup(b, 7)
    answer = httpx.get(f"{a.url}/api/auth-cache/k:7", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401, answer.text


async def test_what_was_learned_before_a_gap_in_listening_is_not_trusted(committed):
    """A notification missed while the listener was away (here: an end recorded without one)
    must not leave a token working: after the reconnect the database is asked again."""
    database = committed.database
    ended = EndedExecutions()
    ended.listener = InvalidationListener(
        database.engine.url, channel_name(committed.settings.db_schema), ended.on_invalidation
    )
    listening = asyncio.create_task(ended.listener.run())

    async def ask(ids):
        async with database.transaction() as conn:
            return await KeychainRepository(conn).ended_among(ids)

    try:
        await _until(lambda: ended.listener.connected)
        assert await ended.first_ended((9,), ask) is None  # learned: 9 is live
        async with database.transaction() as conn:
            await KeychainRepository(conn).mark_ended(9)  # and no NOTIFY
        assert await ended.first_ended((9,), ask) is None  # trusted while listening
        epoch = ended.listener.epoch
        for pid in await asyncio.to_thread(_listeners, committed.url):
            await asyncio.to_thread(_terminate, committed.url, pid)
        await _until(lambda: ended.listener.connected and ended.listener.epoch > epoch)
        assert await ended.first_ended((9,), ask) == 9
        # Heard on the channel (announced only, so the table would say otherwise): known from memory.
        async with database.transaction() as conn:
            await KeychainRepository(conn).announce(Invalidation(ended_execution_id=10))
        deadline = time.monotonic() + 5
        while await ended.first_ended((10,), ask) != 10:
            assert time.monotonic() < deadline, "the notification never arrived"
            await asyncio.sleep(0.01)
    finally:
        listening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listening


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
