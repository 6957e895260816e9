"""A burst across the cluster, as a workflow fan-out makes it: 8 worker processes asking 3 real
`keychain serve` replicas on one PostgreSQL for the same secret (or OAuth2 token) at once.
One provider call for all of them: the fill lease picks the one worker that fetches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import replicas
from tests.json_http import serving_json
from tests.local_server import LocalKeychainServer
from tests.secret_manager_emulator import SecretManagerEmulator

WORKERS = 8
PROVIDER_LATENCY_S = 0.25
SECRET = "projects/1/secrets/burst/versions/1"
# Worker processes need a few seconds to import grpc and friends on 2 cores; they start together.
START_DELAY_S = 6.0

# Where `python -m tests.workerlib.burst_worker` runs from.
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(own_database: str, tmp_path: Path) -> Iterator[list[LocalKeychainServer]]:
    with replicas(
        own_database, tmp_path, 3, sweep_interval_seconds="0", fill_lease_seconds="2"
    ) as servers:
        yield servers


@pytest.fixture
def slow_secret_manager(secret_manager: SecretManagerEmulator) -> Iterator[SecretManagerEmulator]:
    latency, secret_manager.latency = secret_manager.latency, PROVIDER_LATENCY_S
    secret_manager.add(SECRET, "sk-burst")
    yield secret_manager
    secret_manager.latency = latency


@pytest.fixture
def token_endpoint() -> Iterator[tuple[str, list[str]]]:
    """A client-credentials token endpoint as slow as a real one; every token is new."""
    issued: list[str] = []
    lock = threading.Lock()

    def answer(method: str, path: str, body: bytes) -> tuple[int, object]:
        time.sleep(PROVIDER_LATENCY_S)
        with lock:
            issued.append(f"at-{len(issued) + 1}")
            return 200, {"access_token": issued[-1], "token_type": "bearer", "expires_in": 3600}

    with serving_json(answer) as url:
        yield f"{url}/token", issued


async def start_workers(
    servers: list[LocalKeychainServer],
    kind: str,
    name: str,
    *extra: str,
    emulator: str = "",
    count: int = WORKERS,
    start_at: float | None = None,
) -> list[asyncio.subprocess.Process]:
    start_at = start_at or time.time() + START_DELAY_S
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYCHAIN_")}
    return [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.workerlib.burst_worker",
            kind,
            name,
            str(start_at),
            *extra,
            env={
                **env,
                "KEYCHAIN_SERVER_URL": servers[i % len(servers)].url,
                "SECRET_MANAGER_EMULATOR_HOST": emulator,
            },
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(count)
    ]


async def results(workers: list[asyncio.subprocess.Process]) -> list[dict[str, object]]:
    outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), 90)
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err.decode()[-2000:]
    return [json.loads(out.decode().splitlines()[-1]) for out, _ in outputs]


async def test_eight_workers_on_three_replicas_make_one_secret_manager_call(
    cluster, slow_secret_manager
):
    workers = await start_workers(cluster, "secret", SECRET, emulator=slow_secret_manager.address)
    got = await results(workers)
    print(
        f"burst: {WORKERS} workers, {slow_secret_manager.calls[SECRET]} Secret Manager call(s), "
        f"slowest {max(g['seconds'] for g in got):.3f} s"
    )  # the figures, with pytest -s
    assert [g["value"] for g in got] == ["sk-burst"] * WORKERS
    assert slow_secret_manager.calls[SECRET] == 1
    # Nobody waited for more than the one fetch and some slack, let alone its whole fill_wait.
    assert max(g["seconds"] for g in got) < 3.0


async def test_eight_workers_on_three_replicas_get_one_token_from_one_request(
    cluster, token_endpoint
):
    url, issued = token_endpoint
    got = await results(await start_workers(cluster, "oauth", "crm", url))
    assert issued == ["at-1"]
    assert [g["value"] for g in got] == ["at-1"] * WORKERS


async def test_a_lease_holder_killed_mid_fetch_is_replaced_and_nobody_waits_past_its_bound(
    cluster, slow_secret_manager
):
    # The holder's fetch hangs (the emulator answers it after 30 s) and its worker is killed
    # while the others wait on the servers. Its lease (2 s here) runs out, a waiter takes it over
    # and fetches once more.
    slow_secret_manager.latency = 30.0
    start_at = time.time() + START_DELAY_S
    emulator = slow_secret_manager.address
    (holder,) = await start_workers(
        cluster[:1], "secret", SECRET, emulator=emulator, count=1, start_at=start_at
    )
    others = await start_workers(
        cluster, "secret", SECRET, emulator=emulator, start_at=start_at + 0.5
    )
    async with asyncio.timeout(30):
        while slow_secret_manager.calls[SECRET] < 1:  # the holder is fetching
            await asyncio.sleep(0.02)
    slow_secret_manager.latency = PROVIDER_LATENCY_S
    await asyncio.sleep(max(0.0, start_at + 1.0 - time.time()))  # the others are waiting now
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    got = await results(others)
    assert [g["value"] for g in got] == ["sk-burst"] * WORKERS
    assert slow_secret_manager.calls[SECRET] == 2  # the dead holder's, and its replacement's
    # The lease's life plus one fetch, and some slack: nobody waited out its own 10 s wait.
    assert max(g["seconds"] for g in got) < 2.0 + PROVIDER_LATENCY_S + 1.5
