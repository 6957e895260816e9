"""`make bench`: what a cache hit costs, and what access control and read auditing add to it.

Two real `keychain serve` processes on one embedded PostgreSQL (a temporary directory,
127.0.0.1, free ports):
- bare:    an open API (no tokens) with read auditing off;
- guarded: configured tokens and an issuer, every read audited.
Cases, interleaved round by round so the machine's noise falls on all of them alike:
- bare                 GET with no token on the bare server;
- worker token         GET with a configured worker token on the guarded server;
- execution token      GET with an execution token the issuer minted (JWT check, a check that
                       the execution has not ended, and the read check before the hit counts).
Each case: sequential KeychainClient.get latency, and hits per second with CONCURRENCY requests
in flight from one httpx client. The table gives each case as a ratio to `bare` from this run;
absolute numbers on a shared machine mean little. The same figures go to --json.

    python -m bench.hit_path [--rounds 3] [--sequential 200] [--seconds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from demo.local_server import LocalKeychainServer
from workerlib import KeychainClient
from workerlib.client import entry_path

EXECUTION_ID = 4242
KEY = f"projects/bench/secrets/api-key/versions/1:{EXECUTION_ID}"
CONCURRENCY = 16
TIME_LIMIT_S = 600


class Case:
    def __init__(self, name: str, url: str, token: str | None) -> None:
        self.name, self.url, self.token = name, url, token
        self.latencies: list[float] = []
        self.rates: list[float] = []

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


async def sequential(case: Case, requests: int) -> None:
    async with KeychainClient(case.url, case.token) as keychain:
        for _ in range(10):  # warm the connection and the server's code paths
            await keychain.get(KEY)
        for _ in range(requests):
            started = time.perf_counter()
            entry = await keychain.get(KEY)
            case.latencies.append(time.perf_counter() - started)
            if entry is None:
                raise RuntimeError(f"{case.name}: the benchmark entry disappeared")


async def throughput(case: Case, seconds: float) -> None:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=case.url, headers=case.headers(), limits=limits) as http:
        path = entry_path(KEY)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await http.get(path)).raise_for_status()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        case.rates.append(done / (time.perf_counter() - started))


async def prepare(bare: str, guarded: str, worker_token: str, issuer_token: str) -> str:
    """Write the entry on both servers; answer an execution token for the guarded one."""
    async with httpx.AsyncClient(base_url=guarded, headers={"Authorization": f"Bearer {issuer_token}"}) as http:
        minted = await http.post("/api/execution-tokens", json={"execution_id": EXECUTION_ID})
        minted.raise_for_status()
        execution_token = minted.json()["token"]
    value = {"value": "sk-bench-" + secrets.token_hex(8)}
    for url, token in ((bare, None), (guarded, execution_token)):
        async with KeychainClient(url, token) as keychain:
            await keychain.put(KEY, value, credential_type="secret_manager", execution_id=EXECUTION_ID)
    return execution_token


async def run(cases: list[Case], rounds: int, requests: int, seconds: float) -> None:
    for _ in range(rounds):
        for measure in (lambda c: sequential(c, requests), lambda c: throughput(c, seconds)):
            for case in cases:
                await measure(case)


def report(cases: list[Case], args: argparse.Namespace) -> dict[str, object]:
    base = cases[0]
    base_p50, base_rate = statistics.median(base.latencies), statistics.median(base.rates)
    rows = []
    for case in cases:
        p50, rate = statistics.median(case.latencies), statistics.median(case.rates)
        rows.append(
            {
                "case": case.name,
                "p50_ms": round(p50 * 1000, 3),
                "p50_vs_bare": round(p50 / base_p50, 3),
                "hits_per_s": round(rate),
                "hits_per_s_vs_bare": round(rate / base_rate, 3),
                "hits_per_s_rounds": [round(r) for r in case.rates],
            }
        )
    return {
        "command": " ".join(["python", "-m", "bench.hit_path", *sys.argv[1:]]),
        "rounds": args.rounds,
        "sequential_requests_per_round": args.sequential,
        "throughput_seconds_per_round": args.seconds,
        "concurrency": CONCURRENCY,
        "load_generator": "httpx.AsyncClient (Python), on the same 2 cores as the servers",
        "cases": rows,
    }


def print_table(result: dict[str, object]) -> None:
    print(f"command: {result['command']}")
    print(
        f"load:    {result['rounds']} interleaved rounds; per case and round {result['sequential_requests_per_round']}"
        f" sequential KeychainClient.get, then {result['throughput_seconds_per_round']} s at"
        f" {result['concurrency']} in flight ({result['load_generator']})"
    )
    print()
    print(f"{'case':<18} {'p50 ms':>8} {'p50 ÷ bare':>11} {'hits/s':>8} {'hits/s ÷ bare':>14}   hits/s per round")
    for row in result["cases"]:  # type: ignore[union-attr]
        print(
            f"{row['case']:<18} {row['p50_ms']:>8.2f} {row['p50_vs_bare']:>11.2f} {row['hits_per_s']:>8}"
            f" {row['hits_per_s_vs_bare']:>14.2f}   {row['hits_per_s_rounds']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=200, help="sequential GETs per case and round")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of concurrent load per case and round")
    parser.add_argument("--json", type=Path, default=Path(".bench/hit_path.json"))
    args = parser.parse_args()

    worker_token, issuer_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="keychain-bench-", ignore_cleanup_errors=True) as workdir, ExitStack() as stack:
        data_dir = Path(workdir) / "data"  # one embedded PostgreSQL for both servers
        # WARNING: every hit logs an INFO line; the bench keeps that out of the comparison.
        bare = LocalKeychainServer(data_dir, log_level="WARNING", audit_reads="false")
        guarded = LocalKeychainServer(
            data_dir, log_level="WARNING", api_tokens=f"bench:worker:{worker_token},engine:issuer:{issuer_token}"
        )
        try:
            for server in (bare, guarded):
                stack.enter_context(server)
            execution_token = asyncio.run(prepare(bare.url, guarded.url, worker_token, issuer_token))
            cases = [
                Case("bare", bare.url, None),
                Case("worker token", guarded.url, worker_token),
                Case("execution token", guarded.url, execution_token),
            ]
            asyncio.run(asyncio.wait_for(run(cases, args.rounds, args.sequential, args.seconds), TIME_LIMIT_S))
        except Exception as exc:
            print(f"bench failed: {exc!r}", file=sys.stderr)
            for server in (bare, guarded):
                print(f"server log ({server.log_path}):\n{server.log_tail()}", file=sys.stderr)
            return 1
    result = report(cases, args)
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
