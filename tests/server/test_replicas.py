"""Three real `keychain serve` replicas on one PostgreSQL, behind a round-robin proxy as behind a
Kubernetes Service: one sweeper at a time, expiry honoured by every replica's memory tier, and
access counts that add up."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
import httpx

from app.db.tables import keychain
from app.keychain.repository import SWEEP_LOCK_ID
from tests.cluster import NO_KEEPALIVE, RoundRobinProxy, plain_dsn, replicas, sample, scrape
from tests.conftest import qualified_name

REPLICAS = 3
# The replicas, the database and this test share the machine's clock, but a replica compares
# expiry with the database's clock as it measured it: to within half a round trip to
# PostgreSQL, which a busy event loop can stretch to tens of milliseconds.
CLOCK_SLACK_S = 0.1


def _body(value: object, **fields: object) -> dict[str, object]:
    return {"token_data": {"value": value}, "credential_type": "bearer", **fields}


async def _sweeps(urls: list[str]) -> list[dict[str, float]]:
    counts = []
    for url in urls:
        samples = await asyncio.to_thread(scrape, url)
        counts.append(
            {
                result: sample(samples, "keychain_sweeps_total", result=result)
                for result in ("swept", "skipped", "failed")
            }
            | {"rows": sample(samples, "keychain_swept_rows_total")}
        )
    return counts


async def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        await asyncio.sleep(0.05)


async def test_one_replica_sweeps_at_a_time_and_each_expired_row_is_swept_once(
    own_database, tmp_path, test_settings
):
    table = qualified_name(keychain, test_settings.db_schema)
    with replicas(own_database, tmp_path, REPLICAS, sweep_interval_seconds="0.2") as servers:
        urls = [server.url for server in servers]
        conn = await asyncpg.connect(plain_dsn(own_database))
        try:
            async with httpx.AsyncClient(base_url=urls[0]) as http:
                for i in range(20):
                    answer = await http.post(
                        f"/api/auth-cache/short-{i}:global", json=_body(i, ttl_seconds=1)
                    )
                    assert answer.status_code == 200, answer.text

            async def all_swept() -> bool:
                return await conn.fetchval(f"SELECT count(*) FROM {table}") == 0

            await _until(all_swept, 10, "the sweepers deleted every expired row")
            counts = await _sweeps(urls)
            # The passes take turns (the lock lives as long as one batch's transaction), and no
            # row is deleted twice.
            assert sum(c["rows"] for c in counts) == 20
            assert [c["failed"] for c in counts] == [0] * REPLICAS

            # A sweep that takes long, as one with a large backlog does: this lock stalls the
            # sweep's DELETE, while the sweeping replica holds the sweep lock.
            locker = conn.transaction()
            await locker.start()
            await conn.execute(f"LOCK TABLE {table} IN SHARE MODE")

            async def a_sweep_is_stalled() -> bool:
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'keychain' AND wait_event_type = 'Lock'"
                )
                held = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks JOIN pg_database d ON d.oid = pg_locks.database"
                    " WHERE d.datname = current_database() AND locktype = 'advisory' AND granted"
                    " AND (classid::bigint << 32 | objid::bigint) = $1",
                    SWEEP_LOCK_ID,
                )
                return waiting == 1 and held == 1

            await _until(
                a_sweep_is_stalled,
                10,
                "exactly one sweep waits on the table, holding the sweep lock",
            )
            before = await _sweeps(urls)

            async def others_skipped_thrice() -> bool:
                now = await _sweeps(urls)
                moved = sorted(
                    n["skipped"] - b["skipped"] for n, b in zip(now, before, strict=True)
                )
                return all(m >= 3 for m in moved[1:])

            await _until(others_skipped_thrice, 10, "the other replicas skipped three passes each")
            during = await _sweeps(urls)
            moved = [
                (d["swept"] - b["swept"], d["skipped"] - b["skipped"])
                for d, b in zip(during, before, strict=True)
            ]
            # Exactly one replica is sweeping: its pass has neither finished nor been skipped;
            # every pass of the others was skipped, and none of them swept.
            stalled = [i for i, (swept, skipped) in enumerate(moved) if (swept, skipped) == (0, 0)]
            assert len(stalled) == 1, moved
            assert all(
                swept == 0 and skipped >= 3
                for i, (swept, skipped) in enumerate(moved)
                if i not in stalled
            )

            await locker.rollback()
            (holder,) = stalled

            async def holder_finished() -> bool:
                return (await _sweeps(urls))[holder]["swept"] > during[holder]["swept"]

            await _until(holder_finished, 10, "the stalled sweep finished once the table was free")

            async def every_replica_swept_again() -> bool:
                now = await _sweeps(urls)
                return all(n["swept"] > d["swept"] for n, d in zip(now, during, strict=True))

            # The lock went with the transaction: the replicas take turns again.
            await _until(every_replica_swept_again, 10, "every replica swept again")
            assert [c["failed"] for c in await _sweeps(urls)] == [0] * REPLICAS
        finally:
            await conn.close()


async def test_an_entry_expired_on_one_replica_is_served_by_none(own_database, tmp_path):
    # No sweeper: the expiry check on reads alone must stop every replica, memory tier included.
    with (
        replicas(own_database, tmp_path, REPLICAS, sweep_interval_seconds="0") as servers,
        RoundRobinProxy([s.url for s in servers]) as proxy,
    ):
        key = "expiring:global"
        async with httpx.AsyncClient(base_url=servers[0].url) as http:
            written = await http.post(
                f"/api/auth-cache/{key}", json=_body("sk-short", ttl_seconds=2)
            )
        assert written.status_code == 200, written.text
        expires_at = datetime.fromisoformat(written.json()["expires_at"]).timestamp()

        seen: list[tuple[float, int]] = []
        async with httpx.AsyncClient(base_url=proxy.url, limits=NO_KEEPALIVE) as http:
            # Until a second after expiry: before it every replica answers from its memory tier.
            while time.time() < expires_at + 1.0:
                sent = time.time()
                answer = await http.get(f"/api/auth-cache/{key}")
                assert answer.status_code in (200, 404), answer.text
                seen.append((sent, answer.status_code))
                await asyncio.sleep(0.01)

        before = [status for sent, status in seen if sent < expires_at - CLOCK_SLACK_S]
        after = [status for sent, status in seen if sent >= expires_at + CLOCK_SLACK_S]
        assert len(before) >= 2 * REPLICAS and set(before) == {200}
        assert after and set(after) == {404}
        for server in servers:
            samples = await asyncio.to_thread(scrape, server.url)
            # Each replica held the entry in memory (a live listener, hits) and then refused it.
            assert sample(samples, "keychain_invalidation_listener_up") == 1
            assert sample(samples, "keychain_cache_hits_total") >= 2
            assert sample(samples, "keychain_cache_misses_total", reason="expired") >= 1
            async with httpx.AsyncClient(base_url=server.url) as http:
                answer = await http.get(f"/api/auth-cache/{key}")
            assert answer.status_code == 404 and "expired" in answer.json()["detail"]


async def test_hits_on_every_replica_add_up_in_the_table(own_database, tmp_path, test_settings):
    hits = 30
    # Counts reach the table only when the servers stop, which must write them all.
    with replicas(
        own_database, tmp_path, REPLICAS, sweep_interval_seconds="0", hit_flush_seconds="3600"
    ) as servers:
        with RoundRobinProxy([s.url for s in servers]) as proxy:
            async with httpx.AsyncClient(base_url=proxy.url, limits=NO_KEEPALIVE) as http:
                assert (
                    await http.post("/api/auth-cache/counted:global", json=_body("sk-count"))
                ).status_code == 200
                answers = [
                    (await http.get("/api/auth-cache/counted:global")).status_code
                    for _ in range(hits)
                ]
            assert answers == [200] * hits
            # The write went to one replica, then every replica served a third of the reads.
            assert sorted(proxy.connections) == [hits // REPLICAS] * (REPLICAS - 1) + [
                hits // REPLICAS + 1
            ]
        served = [
            sample(await asyncio.to_thread(scrape, s.url), "keychain_cache_hits_total")
            for s in servers
        ]
        assert served == [hits // REPLICAS] * REPLICAS
    assert [server.returncode for server in servers] == [0] * REPLICAS
    conn = await asyncpg.connect(plain_dsn(own_database))
    try:
        assert (
            await conn.fetchval(
                f"SELECT access_count FROM {qualified_name(keychain, test_settings.db_schema)}"
                " WHERE cache_key = 'counted:global'"
            )
            == hits
        )
    finally:
        await conn.close()
