"""`make demo`: the original cache test, end to end, on this machine alone.

Starts the Secret Manager emulator (answers after ~250 ms, like the real service) and a real
Keychain server on an embedded PostgreSQL in a temporary directory, then runs one execution:
a start step, two steps that need the same secret, and an end step that cleans up. Prints
what the cache saved. Everything it started is stopped and removed at the end.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import datetime

from tests.local_server import LocalKeychainServer, run_with_temporary_server
from tests.secret_manager_emulator import SecretManagerEmulator
from workerlib import KeychainClient, fetch_secret
from workerlib.providers import GoogleSecretManagerProvider

SECRET_NAME = "projects/demo-project/secrets/openai-api-key/versions/1"
SECRET_MANAGER_LATENCY_S = 0.25


@dataclass
class Outcome:
    execution_id: int
    miss_s: float
    hit_s: float
    provider_calls: int
    access_count: int
    created_at: datetime
    accessed_at: datetime
    rows_before: int
    rows_cleaned: int
    rows_after: int


def step(text: str) -> None:
    print(f"  {text}", flush=True)


async def run_execution(server_url: str, token: str) -> Outcome:
    execution_id = int(time.time())
    secret_value = "sk-demo-" + secrets.token_hex(12)
    emulator = SecretManagerEmulator({SECRET_NAME: secret_value}, latency=SECRET_MANAGER_LATENCY_S)
    async with emulator:
        # The same wiring a worker gets from SECRET_MANAGER_EMULATOR_HOST and KEYCHAIN_* variables.
        provider = GoogleSecretManagerProvider(emulator_host=emulator.address)
        try:
            async with KeychainClient(server_url, token) as keychain:
                print(f"execution {execution_id}")
                rows_before = (await keychain.list_entries(execution_id=execution_id)).total
                step(f"start: {rows_before} cached entries for this execution")

                started = time.perf_counter()
                first = await fetch_secret(
                    SECRET_NAME, execution_id=execution_id, keychain=keychain, provider=provider
                )
                miss_s = time.perf_counter() - started
                step(
                    f"step 1 needs {SECRET_NAME}: {miss_s * 1000:.1f} ms (miss: Secret Manager, then cached)"
                )

                started = time.perf_counter()
                second = await fetch_secret(
                    SECRET_NAME, execution_id=execution_id, keychain=keychain, provider=provider
                )
                hit_s = time.perf_counter() - started
                step(f"step 2 needs it again:  {hit_s * 1000:.1f} ms (hit: Keychain)")
                if first != secret_value or second != secret_value:
                    raise RuntimeError("the two steps did not get the secret Secret Manager holds")

                # The list endpoint gives the row's metadata without counting a hit of its own.
                page = await keychain.list_entries(execution_id=execution_id)
                if page.total != 1:
                    raise RuntimeError(
                        f"expected one cache row for the execution, found {page.total}"
                    )
                row = page.items[0]

                rows_cleaned = await keychain.cleanup_execution(execution_id)
                rows_after = (await keychain.list_entries(execution_id=execution_id)).total
                step(f"end: cleanup removed {rows_cleaned} entry, {rows_after} left")
        finally:
            await provider.close()
    return Outcome(
        execution_id=execution_id,
        miss_s=miss_s,
        hit_s=hit_s,
        provider_calls=emulator.total_calls,
        access_count=row.access_count,
        created_at=row.created_at,
        accessed_at=row.accessed_at,
        rows_before=rows_before,
        rows_cleaned=rows_cleaned,
        rows_after=rows_after,
    )


def table(outcome: Outcome) -> str:
    rows = [
        ("secret fetch, step 1 (miss)", f"{outcome.miss_s * 1000:.1f} ms"),
        ("secret fetch, step 2 (hit)", f"{outcome.hit_s * 1000:.1f} ms"),
        ("speed-up", f"{outcome.miss_s / outcome.hit_s:.0f}x"),
        ("Secret Manager calls", str(outcome.provider_calls)),
        (
            "access_count",
            f"{outcome.access_count} (step 2's hit; read via the list endpoint, which does not count)",
        ),
        ("created_at", outcome.created_at.isoformat(timespec="microseconds")),
        ("accessed_at", outcome.accessed_at.isoformat(timespec="microseconds")),
        ("accessed_at > created_at", str(outcome.accessed_at > outcome.created_at)),
        ("rows removed by the end step", str(outcome.rows_cleaned)),
    ]
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = f"+-{'-' * width}-+-{'-' * value_width}-+"
    lines = [rule, f"| {'measure'.ljust(width)} | {'value'.ljust(value_width)} |", rule]
    lines += [f"| {name.ljust(width)} | {value.ljust(value_width)} |" for name, value in rows]
    lines.append(rule)
    return "\n".join(lines)


def demo(server: LocalKeychainServer, token: str) -> None:
    print(
        f"Keychain demo: data directory {server.data_dir} (embedded PostgreSQL, removed afterwards)"
    )
    print("starting the Keychain server (keychain migrate, keychain serve) ...", flush=True)
    with server:
        print(f"  {'; '.join(server.commands)}")
        print(f"  listening on {server.url}")
        outcome = asyncio.run(run_execution(server.url, token))
    print()
    print(table(outcome))


def main() -> int:
    return run_with_temporary_server("demo", "admin", demo)


if __name__ == "__main__":
    sys.exit(main())
