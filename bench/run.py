"""`make bench`: Keychain's hit path beside floors of the project's own, as ratios from one run.

It starts everything it needs on 127.0.0.1: a database (KEYCHAIN_DATABASE_URL, else an embedded
PostgreSQL), five `keychain serve` processes and one more Keychain server on it, and the floor app
(bench/floor.py):
- A       tokens configured (a worker, an issuer), every read audited: Keychain as deployed;
- bare    an open API with read auditing off (what access control and auditing cost, by ratio);
- B       A's twin, sweeping every second: the replica of the invalidation and sweep cases;
- 1k, large   A's twins on schemas of their own, 1k rows and 1M rows (200k with --quick);
- U       A's twin served by uvicorn instead of granian (bench/uvicorn_server.py).
The floor app runs twice: under uvicorn (the DB floor issue 13 set the targets against) and
under granian (the server `keychain serve` runs).
Every case runs once per round, rounds one after another, so the machine's noise falls on all
of them alike; each figure is the median over rounds of that round's ratio. Absolute numbers on
a shared 2-core machine mean little; the ratios are the result.

    python -m bench.run [--quick] [--rounds N] [--seconds S] [--load auto|wrk|python] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import math
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import uvloop

from bench import database
from bench.floor import FloorServer, create_table
from bench.load import (
    CONNECTIONS,
    KEY_INDEX,
    Load,
    LoadGenerator,
    LoadResult,
    load_generator,
    request_each_key,
)
from bench.uvicorn_server import UvicornKeychainServer
from tests.local_server import LocalKeychainServer
from workerlib import KeychainClient, fetch_secret
from workerlib.client import entry_path

EXECUTION_ID = 4242
MAIN_SCHEMA = "keychain_bench"
SMALL_SCHEMA = "keychain_bench_1k"
LARGE_SCHEMA = "keychain_bench_large"
# The rows case reads this many keys on both tables; the large one adds filler rows around them.
ROWS_MEASURED_KEYS = 1000
PROVIDER_DELAY_S = 0.25
INVALIDATION_GIVE_UP_S = 2.0
SWEEP_START_TIMEOUT_S = 10.0
SWEEP_LOAD_MAX_S = 60
BURST = 32


def hit_key(i: int | str) -> str:
    return f"projects/bench/secrets/s{i}/versions/1:{EXECUTION_ID}"


def written_key(i: int | str) -> str:
    """The POST cases' keys: apart from the hit keys, so writes never evict what hits read."""
    return f"projects/bench/secrets/w{i}/versions/1:{EXECUTION_ID}"


def templated_entry_path(key_template: str) -> str:
    """entry_path() with KEY_INDEX left in for the load generator (digits need no encoding)."""
    return entry_path(key_template).replace(quote(KEY_INDEX, safe=""), KEY_INDEX)


HIT_KEY_PREFIX, _, HIT_KEY_SUFFIX = hit_key(KEY_INDEX).partition(KEY_INDEX)
POST_BODY = json.dumps(
    {
        "token_data": {"value": "sk-bench-" + "x" * 40},
        "credential_type": "secret_manager",
        "cache_type": "secret",
        "execution_id": EXECUTION_ID,
    }
).encode()


SERVERS = {
    "A": "tokens configured (worker, issuer), every read audited: as deployed",
    "bare": "open API, reads not audited",
    "B": "A's twin on A's schema, sweeping every second",
    "1k, large": "A's twins on schemas of their own",
    "U": "A's twin under uvicorn (uvloop, httptools) instead of keychain serve's granian",
    "floor": "bench/floor.py: Litestar on raw asyncpg, uvicorn with uvloop and httptools",
    "floor G": "the floor app under granian",
}


@dataclass(frozen=True)
class Profile:
    name: str
    rounds: int
    seconds: int  # of load per case and round
    warmup_seconds: int  # of load per case before the first round, not counted
    keys: int  # the hit cases draw from this many keys
    large_rows: int
    expired_rows: int
    sequential: int  # sequential GETs per client case and round
    misses: int  # fetch_secret misses per round (each followed by hits of its key)
    hits_per_miss: int
    invalidations: int  # samples per round


FULL = Profile("full", 3, 5, 2, 10_000, 1_000_000, 100_000, 200, 8, 20, 70)
QUICK = Profile("quick", 2, 1, 1, 1_000, 200_000, 20_000, 100, 3, 20, 15)
TIME_LIMIT_S = {"full": 900, "quick": 240}


@dataclass
class LoadCase:
    name: str
    load: Load
    results: list[LoadResult] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    op: str  # ">=" or "<="; "" for a figure that is reported only
    bound: float = 0.0

    def met(self, value: float) -> bool | None:
        if not self.op:
            return None
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def __str__(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.bound:g}" if self.op else "reported"


REPORTED = Target("")


class SlowProvider:
    """A secret provider as slow as Secret Manager (200-300 ms), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def access(self, name: str) -> str:
        self.calls += 1
        await asyncio.sleep(PROVIDER_DELAY_S)
        return f"sk-bench-{secrets.token_hex(8)}"


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def p99(samples: list[float]) -> float:
    return (
        statistics.quantiles(samples, n=100, method="inclusive")[98]
        if len(samples) > 1
        else samples[0]
    )


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


class Bench:
    def __init__(
        self,
        profile: Profile,
        generator: LoadGenerator,
        servers: dict[str, LocalKeychainServer],
        floors: list[FloorServer],
        worker_token: str,
        execution_token: str,
    ) -> None:
        """`floors`: the floor app under uvicorn, then under granian."""
        floor, floor_granian = floors
        self.profile, self.generator, self.servers = profile, generator, servers
        self.floors = {"uvicorn": floor, "granian": floor_granian}
        self.worker_token, self.execution_token = worker_token, execution_token
        a, keys, w = servers["A"].url, profile.keys, worker_token
        hit_path, floor_path = (
            templated_entry_path(hit_key(KEY_INDEX)),
            f"/floor/{hit_key(KEY_INDEX)}",
        )
        self.cases = {
            "http_floor": LoadCase("HTTP floor (uvicorn): GET /ping", Load(floor.url, "/ping")),
            "db_floor": LoadCase(
                "DB floor (uvicorn): GET, random key", Load(floor.url, floor_path, keys)
            ),
            "hit": LoadCase(
                "Keychain hit, random key (worker token, granian)", Load(a, hit_path, keys, token=w)
            ),
            "hit_hot": LoadCase(
                "Keychain hit, one hot key", Load(a, entry_path(hit_key(0)), token=w)
            ),
            "db_floor_hot": LoadCase(
                "DB floor (uvicorn): GET, one hot key", Load(floor.url, f"/floor/{hit_key(0)}")
            ),
            "health": LoadCase("Keychain GET /health (no I/O, all middleware)", Load(a, "/health")),
            "hit_uvicorn": LoadCase(
                "Keychain hit, random key, under uvicorn",
                Load(servers["U"].url, hit_path, keys, token=w),
            ),
            "db_floor_granian": LoadCase(
                "DB floor (granian): GET, random key", Load(floor_granian.url, floor_path, keys)
            ),
            "hit_bare": LoadCase(
                "Keychain hit, bare (open, unaudited)", Load(servers["bare"].url, hit_path, keys)
            ),
            "hit_execution": LoadCase(
                "Keychain hit, execution token", Load(a, hit_path, keys, token=execution_token)
            ),
            "rows_small": LoadCase(
                f"Keychain hit, {ROWS_MEASURED_KEYS:,} rows",
                Load(servers["1k"].url, hit_path, ROWS_MEASURED_KEYS, token=w),
            ),
            "rows_large": LoadCase(
                f"Keychain hit, {profile.large_rows:,} rows",
                Load(servers["large"].url, hit_path, ROWS_MEASURED_KEYS, token=w),
            ),
            "post": LoadCase(
                "Keychain POST, random key",
                Load(a, templated_entry_path(written_key(KEY_INDEX)), keys, "POST", POST_BODY, w),
            ),
            "post_floor": LoadCase(
                "upsert floor: POST, random key",
                Load(floor.url, f"/floor/{written_key(KEY_INDEX)}", keys, "POST", POST_BODY),
            ),
        }
        sweep_load = Load(servers["B"].url, hit_path, keys, token=w)
        self.sweep_idle = LoadCase("Keychain hit on B, idle as long", sweep_load)
        self.sweeping = LoadCase(
            f"Keychain hit on B, sweeping {profile.expired_rows:,} rows", sweep_load
        )
        self.sweep_seconds: list[float] = []
        self.sequential_p50s: dict[str, list[float]] = {
            "HTTP floor /ping, uvicorn": [],
            "HTTP floor /ping, granian": [],
            "bare": [],
            "worker token": [],
            "worker token, uvicorn": [],
            "execution token": [],
        }
        self.misses: list[float] = []
        # Per round and mode ("lease", "no lease"): provider calls, and the slowest caller (s).
        self.bursts: dict[str, list[tuple[int, float]]] = {"lease": [], "no lease": []}
        self.hits: list[float] = []
        self.invalidation_delays: list[float] = []
        self.invalidations_given_up = 0

    # -- the cases ----------------------------------------------------------------------------

    async def sweep_round(self, db: asyncpg.Connection, round_: int) -> None:
        """Load on B while its sweeper deletes freshly expired rows (from the sweep's first batch
        to its last), then the same load as long again with nothing to sweep: p99s over windows
        of one length compare."""
        await database.insert_rows(
            db,
            MAIN_SCHEMA,
            f"projects/bench/secrets/expired-{round_}-",
            self.profile.expired_rows,
            expired=True,
        )
        deadline = time.monotonic() + SWEEP_START_TIMEOUT_S
        while await database.count_expired(db, MAIN_SCHEMA) >= self.profile.expired_rows:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"B's sweeper did not start within {SWEEP_START_TIMEOUT_S:.0f} s"
                )
            await asyncio.sleep(0.02)
        started, swept = time.perf_counter(), asyncio.Event()

        async def watch() -> None:
            while await database.any_expired(db, MAIN_SCHEMA):
                await asyncio.sleep(0.05)
            swept.set()

        watcher = asyncio.create_task(watch())
        try:
            self.sweeping.results.append(
                await self.generator.run(self.sweeping.load, SWEEP_LOAD_MAX_S, swept)
            )
        finally:
            watcher.cancel()
        if not swept.is_set():
            raise RuntimeError(
                f"B swept {self.profile.expired_rows:,} rows in more than {SWEEP_LOAD_MAX_S} s"
            )
        sweep_seconds = time.perf_counter() - started
        self.sweep_seconds.append(sweep_seconds)
        idle_over = asyncio.Event()
        asyncio.get_running_loop().call_later(sweep_seconds, idle_over.set)
        self.sweep_idle.results.append(
            await self.generator.run(self.sweep_idle.load, math.ceil(sweep_seconds), idle_over)
        )

    async def sequential_round(self, http: httpx.AsyncClient) -> None:
        """p50 of one request at a time: KeychainClient.get, and the same pool's GET /ping."""
        cases: dict[str, Callable[[int], Awaitable[object]]] = {
            f"HTTP floor /ping, {server}": self._ping(http, floor.url)
            for server, floor in self.floors.items()
        }
        for name, url, token in (
            ("bare", self.servers["bare"].url, None),
            ("worker token", self.servers["A"].url, self.worker_token),
            ("worker token, uvicorn", self.servers["U"].url, self.worker_token),
            ("execution token", self.servers["A"].url, self.execution_token),
        ):
            cases[name] = self._get(KeychainClient(url, token, http_client=http), name)
        for name, request in cases.items():
            for i in range(10):  # the connection and the server's code paths, warm
                await request(i)
            latencies = []
            for _ in range(self.profile.sequential):
                i = secrets.randbelow(self.profile.keys)
                started = time.perf_counter()
                await request(i)
                latencies.append(time.perf_counter() - started)
            self.sequential_p50s[name].append(p50(latencies))

    @staticmethod
    def _ping(http: httpx.AsyncClient, floor_url: str) -> Callable[[int], Awaitable[object]]:
        async def ping(_: int) -> object:
            return (await http.get(f"{floor_url}/ping")).raise_for_status()

        return ping

    @staticmethod
    def _get(keychain: KeychainClient, name: str) -> Callable[[int], Awaitable[object]]:
        async def get(i: int) -> object:
            if (entry := await keychain.get(hit_key(i))) is None:
                raise RuntimeError(f"{name}: {hit_key(i)} is missing")
            return entry

        return get

    async def fetch_secret_round(self, keychain: KeychainClient, round_: int) -> None:
        provider = SlowProvider()
        for n in range(self.profile.misses):
            name = f"projects/bench/secrets/fetched-{round_}-{n}/versions/1"
            for i in range(1 + self.profile.hits_per_miss):
                started = time.perf_counter()
                await fetch_secret(
                    name, execution_id=EXECUTION_ID, keychain=keychain, provider=provider
                )
                (self.misses if i == 0 else self.hits).append(time.perf_counter() - started)
            if provider.calls != n + 1:
                raise RuntimeError(
                    f"fetch_secret called the provider {provider.calls} times for {n + 1} secrets"
                )

    async def burst_round(self, http: httpx.AsyncClient, round_: int) -> None:
        """BURST callers miss one secret at once, each with a client of its own (as separate
        workers would be): with the server's fill lease, and without (fill_wait=0)."""
        for mode, fill_wait in (("lease", None), ("no lease", 0.0)):
            provider = SlowProvider()
            name = f"projects/bench/secrets/burst-{round_}-{mode.replace(' ', '-')}/versions/1"
            clients = [
                KeychainClient(
                    self.servers["A"].url, self.worker_token, http_client=http, fill_wait=fill_wait
                )
                for _ in range(BURST)
            ]

            async def timed(client: KeychainClient, name: str, provider: SlowProvider) -> float:
                started = time.perf_counter()
                await fetch_secret(
                    name, execution_id=EXECUTION_ID, keychain=client, provider=provider
                )
                return time.perf_counter() - started

            slowest = max(await asyncio.gather(*(timed(c, name, provider) for c in clients)))
            self.bursts[mode].append((provider.calls, slowest))

    async def invalidation_round(self, a: KeychainClient, b: KeychainClient, round_: int) -> None:
        """Write on A, read on B (so B holds it), delete on A: how long B still serves it."""
        for n in range(self.profile.invalidations):
            key = f"projects/bench/secrets/invalidated-{round_}-{n}/versions/1:{EXECUTION_ID}"
            await a.put(
                key,
                {"value": "sk-bench"},
                credential_type="secret_manager",
                execution_id=EXECUTION_ID,
            )
            if await b.get(key) is None:
                raise RuntimeError(f"replica B does not see {key}, just written on A")
            await a.delete(key)
            deleted = time.perf_counter()
            while await b.get(key) is not None:
                if time.perf_counter() - deleted > INVALIDATION_GIVE_UP_S:
                    self.invalidations_given_up += 1
                    break
            self.invalidation_delays.append(time.perf_counter() - deleted)

    async def fill_memory_tiers(self) -> None:
        """Read every hit key once on every server that serves them: the hit cases measure hits
        from memory, and a server's first read of a key is a miss of its memory tier."""
        w, keys = self.worker_token, self.profile.keys
        readers = [("A", w, keys), ("B", w, keys), ("U", w, keys), ("bare", None, keys)]
        readers += [("1k", w, ROWS_MEASURED_KEYS), ("large", w, ROWS_MEASURED_KEYS)]
        hit_path = templated_entry_path(hit_key(KEY_INDEX))
        for name, token, count in readers:
            if failures := await request_each_key(
                Load(self.servers[name].url, hit_path, count, token=token)
            ):
                raise RuntimeError(f"{name}: {failures} of {count} hit keys did not answer 200")

    async def run(self, db: asyncpg.Connection) -> None:
        with step("reading every hit key once on each server (its memory tier fills)"):
            await self.fill_memory_tiers()
        if self.profile.warmup_seconds:  # not counted: the first round would pay for cold caches
            for case in self.cases.values():
                await self.generator.run(case.load, self.profile.warmup_seconds)
        async with httpx.AsyncClient() as http:
            a = KeychainClient(self.servers["A"].url, self.worker_token, http_client=http)
            b = KeychainClient(self.servers["B"].url, self.worker_token, http_client=http)
            for round_ in range(self.profile.rounds):
                print(f"round {round_ + 1} of {self.profile.rounds}", flush=True)
                for case in self.cases.values():
                    case.results.append(await self.generator.run(case.load, self.profile.seconds))
                await self.sweep_round(db, round_)
                await self.sequential_round(http)
                await self.fetch_secret_round(a, round_)
                await self.burst_round(http, round_)
                await self.invalidation_round(a, b, round_)

    # -- the report ---------------------------------------------------------------------------

    def figures(self) -> list[dict[str, object]]:
        c = self.cases

        def rates(case: LoadCase) -> list[float]:
            return [r.per_second for r in case.results]

        def p50s(case: LoadCase) -> list[float]:
            return [r.p50_ms for r in case.results]

        seq = self.sequential_p50s
        large = f"{self.profile.large_rows:,}"
        rows = [
            (
                "Keychain hit req/s, random key ÷ DB floor, both under granian",
                median_ratio(rates(c["hit"]), rates(c["db_floor_granian"])),
                Target(">=", 2.0),
            ),
            (
                "Keychain hit req/s, hot key ÷ random key",
                median_ratio(rates(c["hit_hot"]), rates(c["hit"])),
                Target(">=", 1.0),
            ),
            (
                "KeychainClient sequential hit p50 ÷ same pool's /ping p50, granian",
                median_ratio(seq["worker token"], seq["HTTP floor /ping, granian"]),
                Target("<=", 1.3),
            ),
            (
                "fetch_secret miss (provider 250 ms) ÷ hit, p50",
                p50(self.misses) / p50(self.hits),
                Target(">=", 100),
            ),
            (
                f"hit p50, {large} rows ÷ {ROWS_MEASURED_KEYS:,} rows",
                median_ratio(p50s(c["rows_large"]), p50s(c["rows_small"])),
                Target("<=", 1.2),
            ),
            (
                f"hit p99 while sweeping {self.profile.expired_rows:,} expired rows ÷ idle",
                median_ratio(
                    [r.p99_ms for r in self.sweeping.results],
                    [r.p99_ms for r in self.sweep_idle.results],
                ),
                Target("<=", 2.0),
            ),
            (
                "cross-replica invalidation delay p99, ms",
                p99(self.invalidation_delays) * 1000,
                Target("<=", 50),
            ),
            (
                f"burst of {BURST} misses for one key: provider calls, with the fill lease",
                max(calls for calls, _ in self.bursts["lease"]),
                Target("<=", 1),
            ),
            (
                f"burst of {BURST} misses for one key: provider calls, without",
                p50([c for c, _ in self.bursts["no lease"]]),
                REPORTED,
            ),
            (
                "burst: slowest caller with the lease ÷ the provider's 250 ms",
                p50([t for _, t in self.bursts["lease"]]) / PROVIDER_DELAY_S,
                REPORTED,
            ),
            (
                "burst: slowest caller without the lease ÷ the provider's 250 ms",
                p50([t for _, t in self.bursts["no lease"]]) / PROVIDER_DELAY_S,
                REPORTED,
            ),
            (
                "Keychain POST req/s ÷ raw asyncpg upsert floor",
                median_ratio(rates(c["post"]), rates(c["post_floor"])),
                REPORTED,
            ),
            (
                "Keychain hit req/s ÷ HTTP floor (/ping, uvicorn)",
                median_ratio(rates(c["hit"]), rates(c["http_floor"])),
                REPORTED,
            ),
            (
                "Keychain hit req/s ÷ Keychain GET /health",
                median_ratio(rates(c["hit"]), rates(c["health"])),
                REPORTED,
            ),
            (
                "Keychain hit req/s ÷ DB floor under uvicorn",
                median_ratio(rates(c["hit"]), rates(c["db_floor"])),
                REPORTED,
            ),
            (
                "KeychainClient sequential hit p50 ÷ same pool's /ping p50, uvicorn",
                median_ratio(seq["worker token"], seq["HTTP floor /ping, uvicorn"]),
                REPORTED,
            ),
            (
                "hit req/s under granian (keychain serve) ÷ under uvicorn (same app)",
                median_ratio(rates(c["hit"]), rates(c["hit_uvicorn"])),
                REPORTED,
            ),
            (
                "sequential hit p50 under granian ÷ under uvicorn (same app)",
                median_ratio(seq["worker token"], seq["worker token, uvicorn"]),
                REPORTED,
            ),
            (
                "hits/s, worker token ÷ bare",
                median_ratio(rates(c["hit"]), rates(c["hit_bare"])),
                REPORTED,
            ),
            (
                "hits/s, execution token ÷ bare",
                median_ratio(rates(c["hit_execution"]), rates(c["hit_bare"])),
                REPORTED,
            ),
            (
                "sequential p50, worker token ÷ bare",
                median_ratio(seq["worker token"], seq["bare"]),
                REPORTED,
            ),
            (
                "sequential p50, execution token ÷ bare",
                median_ratio(seq["execution token"], seq["bare"]),
                REPORTED,
            ),
        ]
        return [
            {
                "figure": name,
                "value": round(value, 3),
                "target": str(target),
                "met": target.met(value),
            }
            for name, value, target in rows
        ]

    def result(self, command: str, database_source: str) -> dict[str, object]:
        load_cases = [*self.cases.values(), self.sweep_idle, self.sweeping]
        return {
            "command": command,
            "profile": dataclasses.asdict(self.profile),
            "differs_from_full": differences(self.profile),
            "load_generator": self.generator.name,
            "cpus": os.cpu_count(),
            "database": database_source,
            "servers": SERVERS,
            "figures": self.figures(),
            "load_cases": [
                {
                    "case": case.name,
                    "req_per_s": round(statistics.median(r.per_second for r in case.results)),
                    "p50_ms": round(statistics.median(r.p50_ms for r in case.results), 2),
                    "p99_ms": round(statistics.median(r.p99_ms for r in case.results), 2),
                    "errors": sum(r.errors for r in case.results),
                    "req_per_s_rounds": [round(r.per_second) for r in case.results],
                }
                for case in load_cases
            ],
            "sequential_p50_ms": {
                name: round(p50(v) * 1000, 3) for name, v in self.sequential_p50s.items()
            },
            "fetch_secret_ms": {
                "miss_p50": round(p50(self.misses) * 1000, 1),
                "hit_p50": round(p50(self.hits) * 1000, 3),
            },
            "sweep_seconds": [round(s, 2) for s in self.sweep_seconds],
            "invalidation_ms": {
                "samples": len(self.invalidation_delays),
                "p50": round(p50(self.invalidation_delays) * 1000, 2),
                "p99": round(p99(self.invalidation_delays) * 1000, 2),
                "max": round(max(self.invalidation_delays) * 1000, 2),
                "given_up_after_2_s": self.invalidations_given_up,
            },
        }


def differences(profile: Profile) -> list[str]:
    return [
        f"{f.name} {getattr(profile, f.name):,} (full: {getattr(FULL, f.name):,})"
        for f in dataclasses.fields(Profile)
        if f.name != "name" and getattr(profile, f.name) != getattr(FULL, f.name)
    ]


def print_result(result: dict[str, object]) -> None:
    profile = result["profile"]
    print(f"\ncommand:        {result['command']}")
    print(
        f"load generator: {result['load_generator']}, {result['cpus']} CPUs shared with everything else"
    )
    print(f"database:       {result['database']}")
    print(f"servers:        {'; '.join(f'{k}: {v}' for k, v in result['servers'].items())}")  # type: ignore[attr-defined]
    print(
        f"rounds:         {profile['rounds']} interleaved, {profile['seconds']} s per load case and round"
    )  # type: ignore[index]
    if result["differs_from_full"]:
        print(f"--quick:        {'; '.join(result['differs_from_full'])}")  # type: ignore[arg-type]
    print(f"\n{'figure':<62} {'value':>9}  {'target':<9} met")
    for row in result["figures"]:  # type: ignore[attr-defined]
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        print(f"{row['figure']:<62} {row['value']:>9.2f}  {row['target']:<9} {met}")
    case = f"load case ({CONNECTIONS} connections)"
    print(f"\n{case:<46} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}   req/s per round")
    for row in result["load_cases"]:  # type: ignore[attr-defined]
        print(
            f"{row['case']:<46} {row['req_per_s']:>7} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['errors']:>6}"
            f"   {row['req_per_s_rounds']}"
        )
    print(f"\nsequential p50 ms: {result['sequential_p50_ms']}")
    print(f"fetch_secret ms:   {result['fetch_secret_ms']}")
    print(f"sweep seconds:     {result['sweep_seconds']}")
    print(f"invalidation ms:   {result['invalidation_ms']}")
    if failed := [row["case"] for row in result["load_cases"] if row["errors"]]:  # type: ignore[attr-defined]
        print(
            f"\nWARNING: errors (non-2xx or transport) in: {', '.join(failed)}; those figures measured something else"
        )


@contextmanager
def step(what: str) -> Iterator[None]:
    """Say what the bench is setting up, and how long it took: the full run's setup is minutes."""
    print(f"{what} ...", end=" ", flush=True)
    started = time.monotonic()
    yield
    print(f"{time.monotonic() - started:.0f} s", flush=True)


def random_key_ring(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


async def seed(
    servers: dict[str, LocalKeychainServer], worker_token: str, profile: Profile
) -> None:
    """The hit keys, written through the API so that the servers can open them."""
    hit_path = templated_entry_path(hit_key(KEY_INDEX))
    for name, count in (
        ("A", profile.keys),
        ("1k", ROWS_MEASURED_KEYS),
        ("large", ROWS_MEASURED_KEYS),
    ):
        load = Load(servers[name].url, hit_path, count, "POST", POST_BODY, worker_token)
        if failures := await request_each_key(load):
            raise RuntimeError(f"{name}: {failures} of {count} writes failed")


async def bench(args: argparse.Namespace, profile: Profile, command: str) -> dict[str, object]:
    worker_token, issuer_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with (
        tempfile.TemporaryDirectory(prefix="keychain-bench-", ignore_cleanup_errors=True) as tmp,
        ExitStack() as stack,
    ):
        workdir = Path(tmp)
        db_url, database_source = stack.enter_context(database.bench_database(workdir))
        generator = load_generator(args.load, workdir, os.cpu_count() or 1)
        print(f"load generator: {generator.name}; database: {database_source}", flush=True)
        db = await database.connect(db_url)
        schemas = [MAIN_SCHEMA, SMALL_SCHEMA, LARGE_SCHEMA]
        try:
            await database.drop_schemas(db, schemas)
            await create_table(db)
            await database.seed_floor(db, HIT_KEY_PREFIX, HIT_KEY_SUFFIX, profile.keys)
            # As the chart configures a shared database: keys given, never made per process.
            common = dict(
                database_url=db_url,
                encryption_keys=random_key_ring("bench"),
                token_signing_keys=random_key_ring("bench"),
                log_level="WARNING",  # an INFO line per hit would dominate what is measured
                sweep_interval_seconds="3600",
            )
            guarded = dict(
                common, api_tokens=f"bench:worker:{worker_token},engine:issuer:{issuer_token}"
            )
            servers = {
                "A": LocalKeychainServer(workdir / "A", schema=MAIN_SCHEMA, **guarded),
                "bare": LocalKeychainServer(
                    workdir / "bare",
                    schema=MAIN_SCHEMA,
                    allow_open_api="true",
                    audit_reads="false",
                    **common,
                ),
                "B": LocalKeychainServer(
                    workdir / "B", schema=MAIN_SCHEMA, **dict(guarded, sweep_interval_seconds="1")
                ),
                "1k": LocalKeychainServer(workdir / "1k", schema=SMALL_SCHEMA, **guarded),
                "large": LocalKeychainServer(workdir / "large", schema=LARGE_SCHEMA, **guarded),
                "U": UvicornKeychainServer(workdir / "U", schema=MAIN_SCHEMA, **guarded),
            }
            floors = [
                FloorServer(workdir / "floor", db_url),
                FloorServer(workdir / "floor-g", db_url, "granian"),
            ]
            for process in (*servers.values(), *floors):
                stack.callback(process.stop)
            try:
                with step(f"starting {len(servers)} keychain servers and {len(floors)} floor apps"):
                    # At once: `keychain migrate` waits on an advisory lock for its turn.
                    await asyncio.gather(
                        *(asyncio.to_thread(p.start) for p in (*servers.values(), *floors))
                    )
                async with KeychainClient(servers["A"].url, issuer_token) as issuer:
                    execution_token = (await issuer.mint_execution_token(EXECUTION_ID)).token
                with step(
                    f"writing {profile.keys:,} + 2 × {ROWS_MEASURED_KEYS:,} entries through the API"
                ):
                    await seed(servers, worker_token, profile)
                filler = profile.large_rows - ROWS_MEASURED_KEYS
                with step(f"inserting {filler:,} filler rows with SQL"):
                    await database.insert_rows(
                        db, LARGE_SCHEMA, "projects/filler/secrets/f", filler, expired=False
                    )
                run = Bench(profile, generator, servers, floors, worker_token, execution_token)
                await run.run(db)
            except Exception:
                for name, process in {**servers, "floor": floors[0], "floor G": floors[1]}.items():
                    print(
                        f"{name} log ({process.log_path}):\n{process.log_tail()}", file=sys.stderr
                    )
                raise
            return run.result(command, database_source)
        finally:
            await database.drop_schemas(db, schemas)
            await db.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer keys, rows, rounds and seconds: under 2 minutes"
    )
    parser.add_argument("--rounds", type=int, help="override the profile's rounds")
    parser.add_argument(
        "--seconds", type=int, help="override the profile's seconds of load per case and round"
    )
    parser.add_argument(
        "--load", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    parser.add_argument("--json", type=Path, default=Path(".bench/results.json"))
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    overrides = {
        name: value for name in ("rounds", "seconds") if (value := getattr(args, name)) is not None
    }
    profile = dataclasses.replace(profile, **overrides)
    command = " ".join(["python", "-m", "bench.run", *sys.argv[1:]])
    started = time.monotonic()
    try:
        result = uvloop.run(
            asyncio.wait_for(bench(args, profile, command), TIME_LIMIT_S[profile.name])
        )
    except Exception as exc:
        print(f"bench failed: {exc!r}", file=sys.stderr)
        return 1
    result["wall_seconds"] = round(time.monotonic() - started)
    print_result(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['wall_seconds']} s; written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
