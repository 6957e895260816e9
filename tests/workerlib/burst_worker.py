"""One worker process of the burst tests: at a given moment, fetch one secret or one OAuth2
token through workerlib, then print what it got and how long it took, as a JSON line.

    python -m tests.workerlib.burst_worker secret|oauth NAME START_AT [TOKEN_URL]

The server is KEYCHAIN_SERVER_URL, Secret Manager SECRET_MANAGER_EMULATOR_HOST.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from workerlib import KeychainClient, fetch_secret
from workerlib.oauth import client_credentials_token


async def main(kind: str, name: str, start_at: float, token_url: str | None) -> None:
    async with KeychainClient() as keychain:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        if kind == "secret":
            value = await fetch_secret(name, keychain=keychain, execution_id=42)
        else:
            assert token_url is not None
            value = await client_credentials_token(
                name,
                token_url=token_url,
                client_id="burst",
                client_secret="burst-secret",
                keychain=keychain,
                insecure_hosts=["127.0.0.1"],
            )
        seconds = time.perf_counter() - started
    print(json.dumps({"value": value, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None
        )
    )
