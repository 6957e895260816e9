"""Fill leases: a miss filled once for the whole cluster. Three in-process replicas (apps with
their listeners and memory tiers) on one committed database."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import pytest

from tests.bodies import entry_body
from tests.server.replicas import replica

KEY = "projects/1/secrets/burst/versions/1:42"
URL = f"/api/auth-cache/{KEY}"
BODY = entry_body({"value": "sk-filled-once"}, credential_type="secret_manager", execution_id=42)
LEASE = "keychain-fill-lease"


async def replicas(stack: AsyncExitStack, test_settings, url: str, count: int = 3, **settings):
    return [
        await stack.enter_async_context(replica(test_settings, url, **settings))
        for _ in range(count)
    ]


def counted(server, name: str, **labels: str) -> float:
    return server.process.metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_the_first_reader_fills_and_the_others_on_every_replica_get_its_write(
    test_settings, own_database
):
    async with AsyncExitStack() as stack:
        a, b, c = await replicas(stack, test_settings, own_database)
        first = await a.client.get(URL, params={"fill_wait": 5})
        assert first.status_code == 404 and first.headers[LEASE]
        assert "holds its fill lease" in first.json()["detail"]

        waiting = [
            asyncio.ensure_future(s.client.get(URL, params={"fill_wait": 5})) for s in (b, c, c, a)
        ]
        await asyncio.sleep(0.3)  # the fetch from the provider
        assert not any(w.done() for w in waiting)  # held on the server, not answered a miss
        written_at = time.monotonic()
        written = await a.client.post(URL, json=BODY, headers={LEASE: first.headers[LEASE]})
        assert written.status_code == 200
        answers = await asyncio.gather(*waiting)
        woke_after = time.monotonic() - written_at
        assert [r.status_code for r in answers] == [200] * 4
        assert {r.json()["data"]["value"] for r in answers} == {"sk-filled-once"}
        assert woke_after < 1.0  # by the write's NOTIFY, not by polling out their wait
        assert counted(a, "keychain_fill_leases_total", purpose="fill") == 1
        waits = sum(counted(s, "keychain_fill_waits_total", outcome="filled") for s in (a, b, c))
        assert waits == 4
        assert counted(a, "keychain_fill_seconds_count") == 1


async def test_a_holder_that_gives_up_hands_the_lease_to_a_waiter_at_once(
    test_settings, own_database, caplog
):
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, test_settings, own_database, count=2, fill_lease_seconds=30.0)
        lease = (await a.client.get(URL, params={"fill_wait": 5})).headers[LEASE]
        waiter = asyncio.ensure_future(b.client.get(URL, params={"fill_wait": 10}))
        await asyncio.sleep(0.2)
        released = await a.client.delete(f"/api/fill-leases/{KEY}", headers={LEASE: lease})
        assert released.status_code == 204
        taken_over = await asyncio.wait_for(waiter, 2)  # long before the 30 s lease would end
        assert taken_over.status_code == 404 and taken_over.headers[LEASE] not in ("", lease)
        assert counted(b, "keychain_fill_waits_total", outcome="took_over") == 1
        again = await a.client.delete(f"/api/fill-leases/{KEY}", headers={LEASE: lease})
        assert again.status_code == 404
    released_events = [
        (r.outcome, r.status, r.cache_key)
        for r in caplog.records
        if r.name == "keychain.audit" and r.audit_action == "releaseFillLease"
    ]
    assert released_events == [("ok", 204, KEY), ("failed", 404, KEY)]


async def test_a_holder_that_vanished_is_replaced_when_its_lease_runs_out(
    test_settings, own_database
):
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, test_settings, own_database, count=2, fill_lease_seconds=0.5)
        assert (await a.client.get(URL, params={"fill_wait": 5})).headers[LEASE]  # and never writes
        started = time.monotonic()
        taken_over = await b.client.get(URL, params={"fill_wait": 5})
        assert taken_over.status_code == 404 and taken_over.headers[LEASE]
        assert 0.4 < time.monotonic() - started < 2.0


async def test_a_waiter_is_never_held_past_its_own_wait(test_settings, own_database):
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, test_settings, own_database, count=2, fill_lease_seconds=30.0)
        assert (await a.client.get(URL, params={"fill_wait": 5})).headers[LEASE]
        started = time.monotonic()
        answer = await b.client.get(URL, params={"fill_wait": 0.3})
        assert time.monotonic() - started < 1.5
        assert (answer.status_code, answer.headers["keychain-fill"]) == (404, "timed-out")
        assert LEASE not in answer.headers
        assert "fetch it yourself" in answer.json()["detail"]


async def test_waiters_hold_no_connection_and_past_the_cap_none_waits(test_settings, own_database):
    # One connection in the pool and many waiters: had they held it, the write could not commit.
    async with AsyncExitStack() as stack:
        (a,) = await replicas(
            stack, test_settings, own_database, count=1, db_pool_size=1, fill_max_waiters=5
        )
        lease = (await a.client.get(URL, params={"fill_wait": 5})).headers[LEASE]
        waiting = [
            asyncio.ensure_future(a.client.get(URL, params={"fill_wait": 5})) for _ in range(5)
        ]
        await asyncio.sleep(0.2)
        over_cap = await a.client.get(URL, params={"fill_wait": 5})
        assert (over_cap.status_code, over_cap.headers["keychain-fill"]) == (404, "busy")
        assert (await a.client.post(URL, json=BODY, headers={LEASE: lease})).status_code == 200
        assert [r.status_code for r in await asyncio.gather(*waiting)] == [200] * 5


async def test_a_reader_that_does_not_ask_is_answered_a_plain_miss(test_settings, own_database):
    async with AsyncExitStack() as stack:
        (a,) = await replicas(stack, test_settings, own_database, count=1)
        answer = await a.client.get(URL)
        assert answer.status_code == 404 and LEASE not in answer.headers
        assert answer.json()["detail"] == "no live entry for this key (absent)"


@pytest.mark.parametrize("wait", ["0", "-1", "301", "soon"])
async def test_a_bad_fill_wait_is_refused(client, wait):
    answer = await client.get(URL, params={"fill_wait": wait})
    assert answer.status_code == 400
    assert "fill_wait" in answer.text
