"""Writes across real replicas: concurrent writers on one key from every replica at once, and a
replica SIGKILLed in the middle of a burst of writes."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator

import asyncpg
import httpx

from app.db.tables import keychain
from tests.bodies import entry_body
from tests.cluster import NO_KEEPALIVE, RoundRobinProxy, plain_dsn, replicas
from tests.conftest import TEST_KEY_ID, qualified_name


def _payload(*ids: int) -> dict[str, object]:
    # A few kilobytes, each part naming the write: a payload mixed from two writes shows.
    tag = ".".join(map(str, ids))
    return {"ids": list(ids), "blob": f"<{tag}>" * 300}


async def test_concurrent_writers_on_one_key_last_write_wins_and_every_read_is_whole(
    own_database, tmp_path, test_settings
):
    key = "contended:global"
    writers_per_replica, writes_each = 2, 20
    with (
        replicas(own_database, tmp_path, 3, sweep_interval_seconds="0") as servers,
        RoundRobinProxy([s.url for s in servers]) as proxy,
    ):
        writes: list[tuple[int, bool]] = []  # (status, created)
        first_written: list[float] = []
        writing = True

        async def writer(http: httpx.AsyncClient, writer_id: int) -> None:
            for seq in range(writes_each):
                body = entry_body(_payload(writer_id, seq), credential_name=f"writer-{writer_id}")
                answer = await http.post(f"/api/auth-cache/{key}", json=body)
                writes.append(
                    (answer.status_code, answer.status_code == 200 and answer.json()["created"])
                )
                if answer.status_code == 200 and not first_written:
                    first_written.append(time.monotonic())

        reads: list[tuple[float, httpx.Response]] = []

        async def reader(http: httpx.AsyncClient) -> None:
            while writing:
                sent = time.monotonic()
                reads.append((sent, await http.get(f"/api/auth-cache/{key}")))

        def whole(answer: httpx.Response) -> tuple[int, int]:
            """The (writer, seq) of a read, checked to be one write's payload and metadata."""
            entry = answer.json()
            writer_id, seq = entry["data"]["ids"]
            assert entry["data"] == _payload(writer_id, seq)
            assert entry["credential_name"] == f"writer-{writer_id}"
            assert 0 <= seq < writes_each
            return writer_id, seq

        clients = [httpx.AsyncClient(base_url=s.url, timeout=30) for s in servers]
        try:
            async with httpx.AsyncClient(
                base_url=proxy.url, limits=NO_KEEPALIVE, timeout=30
            ) as through_proxy:
                readers = [asyncio.create_task(reader(through_proxy)) for _ in range(3)]
                # Every writer starts at once, on a key nobody has written yet.
                await asyncio.gather(
                    *(
                        writer(clients[i % len(servers)], i)
                        for i in range(writers_per_replica * len(servers))
                    )
                )
                writing = False
                await asyncio.gather(*readers)

            assert [status for status, _ in writes] == [200] * writers_per_replica * len(
                servers
            ) * writes_each
            # The first writers raced to create the key: exactly one did, the others replaced it.
            assert sum(created for _, created in writes) == 1
            assert reads, "no read ran while the writers wrote"
            for sent, answer in reads:
                # Before the first write was acknowledged the key may be absent; never after.
                if answer.status_code == 404 and sent < first_written[0]:
                    continue
                assert answer.status_code == 200, answer.text
                whole(answer)

            # Every replica comes to the same entry (each hears the others' writes), and it is
            # the last write of one writer: no write ever replaced a later one.
            async def agreed() -> tuple[int, int] | None:
                seen = {whole(await http.get(f"/api/auth-cache/{key}")) for http in clients}
                return seen.pop() if len(seen) == 1 else None

            deadline = time.monotonic() + 5
            while (final := await agreed()) is None:
                assert time.monotonic() < deadline, "the replicas still disagree on the entry"
                await asyncio.sleep(0.05)
            assert final[1] == writes_each - 1
        finally:
            for http in clients:
                await http.aclose()

    conn = await asyncpg.connect(plain_dsn(own_database))
    try:
        assert await conn.fetchval(
            f"SELECT credential_name FROM {qualified_name(keychain, test_settings.db_schema)}"
            " WHERE cache_key = $1",
            key,
        ) == (f"writer-{final[0]}")
    finally:
        await conn.close()


def _crash_jobs(keys: int, lag: int) -> Iterator[tuple[int, int]]:
    """(key number, version): every key created (version 1), and replaced (version 2) while
    later keys are being created, so that the kill finds inserts and updates in flight."""
    for n in range(keys + lag):
        if n < keys:
            yield n, 1
        if n >= lag:
            yield n - lag, 2


def _crash_key(n: int) -> str:
    return f"crash-{n}:{10_000 + n}"


def _crash_body(n: int, version: int) -> dict[str, object]:
    return entry_body(
        _payload(n, version),
        cache_type="secret",
        scope_type="execution",
        credential_name=f"cred-{n}-v{version}",
        execution_id=10_000 + n,
        parent_execution_id=20_000 + version,
        ttl_seconds=600 + version,
    )


async def test_a_replica_killed_mid_burst_leaves_only_whole_rows(
    own_database, tmp_path, test_settings
):
    with replicas(own_database, tmp_path, 2, sweep_interval_seconds="0") as (victim, survivor):
        jobs = _crash_jobs(keys=150, lag=10)
        acknowledged: dict[int, int] = {}
        cut_off: list[BaseException] = []
        # A key's replace is sent only once its create was answered (or cut off): sent while the
        # create is still in flight, the two may commit in either order, and the later commit
        # wins, which is not a lost write.
        created = collections.defaultdict(asyncio.Event)

        async def write(http: httpx.AsyncClient) -> None:
            for n, version in jobs:  # shared: each job is taken by one task
                if version == 2:
                    await created[n].wait()
                try:
                    answer = await http.post(
                        f"/api/auth-cache/{_crash_key(n)}", json=_crash_body(n, version)
                    )
                except httpx.TransportError as exc:
                    cut_off.append(exc)
                    return
                finally:
                    if version == 1:
                        created[n].set()
                assert answer.status_code == 200, answer.text
                acknowledged[n] = max(version, acknowledged.get(n, 0))

        async with httpx.AsyncClient(base_url=victim.url, timeout=30) as http:
            burst = [asyncio.create_task(write(http)) for _ in range(8)]
            deadline = time.monotonic() + 20
            while len(acknowledged) < 60:
                for task in burst:
                    if task.done():
                        task.result()  # a writer that failed says why
                assert time.monotonic() < deadline, "the burst stalled"
                await asyncio.sleep(0.005)
            victim._process.kill()
            await asyncio.wait_for(asyncio.gather(*burst), 30)
        assert await asyncio.to_thread(victim._process.wait, 10) == -9
        # The kill came in the middle of the burst: requests were cut off, and jobs were left.
        assert cut_off and next(jobs, None) is not None

        conn = await asyncpg.connect(plain_dsn(own_database))
        try:
            rows = await conn.fetch(
                f"SELECT * FROM {qualified_name(keychain, test_settings.db_schema)} ORDER BY cache_key"
            )
        finally:
            await conn.close()
        found = {}
        async with httpx.AsyncClient(base_url=survivor.url, timeout=30) as http:
            for row in rows:
                n = int(row["cache_key"].removeprefix("crash-").split(":")[0])
                version = int(row["credential_name"].rsplit("-v", 1)[1])
                written = _crash_body(n, version)
                # The row is one write, whole: every column as that write sent it.
                assert (
                    row["cache_key"] == _crash_key(n)
                    and row["credential_name"] == f"cred-{n}-v{version}"
                )
                assert (
                    row["scope_type"],
                    row["execution_id"],
                    row["parent_execution_id"],
                    row["ttl_seconds"],
                ) == ("execution", 10_000 + n, 20_000 + version, 600 + version), dict(row)
                assert (row["credential_type"], row["cache_type"], row["key_id"]) == (
                    "bearer",
                    "secret",
                    TEST_KEY_ID,
                )
                # And it opens, with that same write's payload.
                answer = await http.get(f"/api/auth-cache/{row['cache_key']}")
                assert answer.status_code == 200, answer.text
                entry = answer.json()
                assert entry["data"] == written["token_data"]
                assert (entry["credential_name"], entry["execution_id"]) == (
                    f"cred-{n}-v{version}",
                    10_000 + n,
                )
                found[n] = version
        # Nothing acknowledged was lost: each key holds its acknowledged write or a later one.
        assert all(found.get(n, 0) >= version for n, version in acknowledged.items()), (
            acknowledged,
            found,
        )
