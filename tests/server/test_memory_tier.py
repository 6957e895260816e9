"""The memory tier with real commits: apps with their lifespans (listener, hit flusher) on a
database of the test's own, two of them standing in for two replicas."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from sqlalchemy import event

from app import invalidation
from app.db.tables import keychain
from app.invalidation import LISTENER_APPLICATION_NAME
from app.keychain.service import KeychainService
from tests.bodies import entry_body
from tests.conftest import qualified_name
from tests.server.replicas import read_into_memory, replica, until

BODY = entry_body({"value": "sk-from-memory"})


async def _row(settings, url: str, key: str):
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await conn.fetchrow(
            f"SELECT * FROM {qualified_name(keychain, settings.db_schema)} WHERE cache_key = $1",
            key,
        )
    finally:
        await conn.close()


async def test_hits_come_from_memory_and_their_counts_are_written_at_shutdown(
    test_settings, own_database
):
    async with replica(test_settings, own_database) as a:
        assert (await a.client.post("/api/auth-cache/k:global", json=BODY)).status_code == 200
        await read_into_memory(a, "k:global")  # one read or more: each one counts
        checkouts: list[object] = []
        event.listen(a.engine.sync_engine.pool, "checkout", lambda *args: checkouts.append(args))
        counts = [
            (await a.client.get("/api/auth-cache/k:global")).json()["access_count"]
            for _ in range(5)
        ]
        assert counts == list(range(counts[0], counts[0] + 5)) and counts[0] >= 2
        assert checkouts == []  # not one connection taken for those five hits
        assert (await _row(test_settings, own_database, "k:global"))[
            "access_count"
        ] == 0  # not flushed yet
    row = await _row(test_settings, own_database, "k:global")
    assert row["access_count"] == counts[-1]
    assert row["accessed_at"] > row["created_at"]


async def test_counts_from_two_replicas_add_up(test_settings, own_database):
    async with replica(test_settings, own_database) as a, replica(test_settings, own_database) as b:
        await a.client.post("/api/auth-cache/k:global", json=BODY)
        for server, hits in ((a, 3), (b, 4)):
            for _ in range(hits):
                assert (await server.client.get("/api/auth-cache/k:global")).status_code == 200
    assert (await _row(test_settings, own_database, "k:global"))["access_count"] == 7


async def test_a_change_on_one_replica_reaches_the_others_memory(test_settings, own_database):
    async with replica(test_settings, own_database) as a, replica(test_settings, own_database) as b:
        await a.client.post("/api/auth-cache/k:global", json=BODY)
        assert (await b.client.get("/api/auth-cache/k:global")).json()["data"] == BODY["token_data"]
        await read_into_memory(b, "k:global")

        replaced = entry_body({"value": "sk-rotated"})
        await a.client.post("/api/auth-cache/k:global", json=replaced)

        async def b_sees_the_new_value():
            return (await b.client.get("/api/auth-cache/k:global")).json()["data"] == {
                "value": "sk-rotated"
            }

        assert await until(b_sees_the_new_value) < 0.5

        await a.client.delete("/api/auth-cache/k:global")

        async def b_misses():
            return (await b.client.get("/api/auth-cache/k:global")).status_code == 404

        await until(b_misses)

        await a.client.post("/api/auth-cache/s:7", json={**BODY, "execution_id": 7})
        assert (await b.client.get("/api/auth-cache/s:7")).status_code == 200
        await a.client.delete("/api/executions/7/auth-cache")

        async def b_dropped_the_execution():
            return (await b.client.get("/api/auth-cache/s:7")).status_code == 404

        await until(b_dropped_the_execution)


class _SkewedClock:
    """Stands in for the `time` module in app.invalidation: this process's clock, off by `skew`."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew


@pytest.mark.parametrize(
    "skew", [-30.0, 0.0, 30.0], ids=["clock-behind", "clock-in-step", "clock-ahead"]
)
async def test_an_entry_is_never_served_from_memory_past_its_expiry(
    test_settings, own_database, monkeypatch, skew
):
    # The replica's clock is off by `skew`; the database's (on this machine) is the real one, so
    # time.time() below is the database's time. Behind, an uncorrected replica would serve the
    # entry 30 s too long; ahead, it would take it for expired and read the database on every hit.
    monkeypatch.setattr(invalidation, "time", _SkewedClock(skew))
    async with replica(test_settings, own_database) as a:
        await a.client.post("/api/auth-cache/short:global", json={**BODY, "ttl_seconds": 1})
        await read_into_memory(a, "short:global")
        expires = a.process.tier.get("short:global").expires_at
        checkouts: list[object] = []
        event.listen(a.engine.sync_engine.pool, "checkout", lambda *args: checkouts.append(args))
        while time.time() < expires - 0.2:
            assert (await a.client.get("/api/auth-cache/short:global")).status_code == 200
            await asyncio.sleep(0.05)
        assert checkouts == []  # served from memory all along, not re-read as if expired
        # Still in memory, but past its expiry by the database's clock: not served.
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
        assert a.process.tier.get("short:global") is not None
        answer = await a.client.get("/api/auth-cache/short:global")
        assert (answer.status_code, answer.json()["detail"]) == (
            404,
            "no live entry for this key (expired)",
        )


async def test_a_replace_starts_the_count_again_even_with_hits_pending(test_settings, own_database):
    async with replica(test_settings, own_database) as a:
        await a.client.post("/api/auth-cache/k:global", json=BODY)
        for _ in range(3):
            await a.client.get("/api/auth-cache/k:global")
        await a.client.post(
            "/api/auth-cache/k:global", json=BODY
        )  # hits on the old version pending
        await a.client.get("/api/auth-cache/k:global")
    assert (await _row(test_settings, own_database, "k:global"))["access_count"] == 1


async def test_what_memory_held_before_a_gap_in_listening_is_dropped(test_settings, own_database):
    async with replica(test_settings, own_database) as a:
        await a.client.post("/api/auth-cache/k:global", json=BODY)
        assert (await a.client.get("/api/auth-cache/k:global")).status_code == 200
        # A change that no notification announced, as one lost in a gap would be.
        conn = await asyncpg.connect(own_database.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(
                f"UPDATE {qualified_name(keychain, test_settings.db_schema)}"
                " SET expires_at = now() - interval '1 s'"
            )
            epoch = a.process.tier.listener.epoch
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                LISTENER_APPLICATION_NAME,
            )
        finally:
            await conn.close()

        async def reconnected():
            return a.process.tier.listener.connected and a.process.tier.listener.epoch > epoch

        await until(reconnected, timeout=10)
        assert (await a.client.get("/api/auth-cache/k:global")).status_code == 404


async def test_a_hit_from_memory_answers_exactly_as_the_handler_does(
    test_settings, own_database, monkeypatch
):
    # getEntry has a fast lane for hits memory alone can serve; the full handler answers the
    # first read (a miss of the tier). The two answers differ only in the count and its time.
    handled: list[str] = []
    full_get = KeychainService.get

    async def spied_get(self, cache_key, principal, fill_wait=None):
        handled.append(cache_key)
        return await full_get(self, cache_key, principal, fill_wait)

    monkeypatch.setattr(KeychainService, "get", spied_get)
    async with replica(test_settings, own_database) as a:
        await a.client.post("/api/auth-cache/k:global", json=BODY)
        await read_into_memory(a, "k:global")
        a.process.tier.clear()
        handled.clear()
        by_handler = await a.client.get("/api/auth-cache/k:global")
        from_memory = await a.client.get("/api/auth-cache/k:global")
    assert handled == ["k:global"]  # the first read only
    assert by_handler.status_code == from_memory.status_code == 200
    for answer in (by_handler, from_memory):
        assert [name for name in answer.headers if name != "content-length"] == [
            "content-type",
            "x-request-id",
        ]
        assert answer.headers["content-type"] == "application/json"
    first, second = by_handler.json(), from_memory.json()
    assert second.pop("access_count") == first.pop("access_count") + 1
    assert second.pop("accessed_at") >= first.pop("accessed_at")
    assert first == second and first["data"] == BODY["token_data"]


async def test_memory_serves_no_one_the_database_would_refuse(test_settings, own_database):
    tokens = "w1:worker:w1-worker-token-0123456789,engine:issuer:engine-issuer-token-0123456789"
    w1, engine = (
        {"Authorization": f"Bearer {t}"} for t in tokens.split(",") for t in [t.split(":")[2]]
    )
    async with replica(test_settings, own_database, api_tokens=tokens, allow_open_api=False) as a:
        minted = await a.client.post(
            "/api/execution-tokens", json={"execution_id": 7, "read": ["shared"]}, headers=engine
        )
        execution = {"Authorization": f"Bearer {minted.json()['token']}"}
        for key, fields in (
            ("shared:global", {}),
            ("private:global", {}),
            ("other:8", {"execution_id": 8}),
        ):
            answer = await a.client.post(
                f"/api/auth-cache/{key}", json={**BODY, **fields}, headers=w1
            )
            assert answer.status_code == 200, answer.text
            async with asyncio.timeout(2):
                while a.process.tier.get(key) is None:
                    assert (
                        await a.client.get(f"/api/auth-cache/{key}", headers=w1)
                    ).status_code == 200
        assert (
            await a.client.get("/api/auth-cache/shared:global", headers=execution)
        ).status_code == 200
        for key in ("private:global", "other:8"):
            answer = await a.client.get(f"/api/auth-cache/{key}", headers=execution)
            assert answer.status_code == 403, answer.text
        await a.client.delete("/api/executions/7/auth-cache", headers=engine)
        answer = await a.client.get("/api/auth-cache/shared:global", headers=execution)
        assert (answer.status_code, answer.json()["detail"]) == (
            401,
            "execution 7 has ended; its execution tokens no longer work",
        )
        assert a.process.tier.get("shared:global") is not None  # refused, though memory holds it
