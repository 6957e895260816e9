"""`make bench`: how long a cache hit takes, end to end, on this machine.

Starts a real Keychain server (uvicorn through `keychain serve`, embedded PostgreSQL in a
temporary directory, 127.0.0.1 and a free port), writes one entry, then times sequential GETs
of it (a) with one keep-alive httpx.AsyncClient and (b) through KeychainClient.get. Every GET
is a real hit: an UPDATE ... RETURNING (access_count, accessed_at) and an AES-GCM open.

    python -m bench.get_latency [--requests 1000] [--warmup 50]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

import httpx

from demo.local_server import LocalKeychainServer, run_with_temporary_server
from workerlib import KeychainClient
from workerlib.client import entry_path

KEY = "projects/bench/secrets/api-key/versions/1:1"
TIME_LIMIT_S = 300


def summary(label: str, samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    ms = [x * 1000 for x in (statistics.median(samples), cuts[94], cuts[98])]
    return f"{label:<36} median {ms[0]:6.2f} ms   p95 {ms[1]:6.2f} ms   p99 {ms[2]:6.2f} ms   (n={len(samples)})"


async def measure(url: str, token: str, requests: int, warmup: int) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"}
    lines = []
    async with KeychainClient(url, token) as keychain:
        await keychain.put(KEY, {"value": "sk-bench-" + secrets.token_hex(8)}, credential_type="secret_manager",
                           execution_id=1, ttl_seconds=3600)

        async with httpx.AsyncClient(base_url=url, headers=headers) as http:
            path = entry_path(KEY)
            samples = []
            for i in range(warmup + requests):
                started = time.perf_counter()
                response = await http.get(path)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                if i >= warmup:
                    samples.append(elapsed)
            lines.append(summary("(a) raw httpx.AsyncClient GET", samples))

        samples = []
        for i in range(warmup + requests):
            started = time.perf_counter()
            entry = await keychain.get(KEY)
            elapsed = time.perf_counter() - started
            if entry is None:
                raise RuntimeError("the benchmark entry disappeared")
            if i >= warmup:
                samples.append(elapsed)
        lines.append(summary("(b) KeychainClient.get", samples))
        lines.append(f"access_count after the run: {entry.access_count} (every GET counted a hit)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    def bench(server: LocalKeychainServer, token: str) -> None:
        with server:
            print(f"command: {' '.join([Path(sys.executable).name, '-m', 'bench.get_latency', *sys.argv[1:]])}")
            print(f"server:  {'; '.join(server.commands)} (uvicorn, embedded PostgreSQL, {server.url})")
            print(f"load:    {args.requests} sequential GETs of one entry after {args.warmup} warm-up GETs, each way")
            lines = asyncio.run(asyncio.wait_for(measure(server.url, token, args.requests, args.warmup), TIME_LIMIT_S))
        print("\n".join(lines))

    return run_with_temporary_server("bench", "worker", bench)


if __name__ == "__main__":
    sys.exit(main())
