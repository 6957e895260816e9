"""Refresh ahead: a cached OAuth2 token near the end of its cached life is refreshed by one
reader, chosen by the server through a fill lease, while every reader keeps the current one."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from app.db.tables import keychain
from app.invalidation import channel_name
from tests import cluster
from tests.conftest import qualified_name
from tests.server.replicas import replica, until
from tests.workerlib.helpers import IDP_URL, token_endpoint
from workerlib import KeychainClient
from workerlib.oauth import client_credentials_token

TOKEN_URL = f"{IDP_URL}/token"
READERS = 12
IDP_DELAY_S = 0.5


async def test_readers_in_the_refresh_window_never_wait_and_one_refresh_is_made(
    test_settings, own_database
):
    idp = token_endpoint(expires_in=3600, delay=IDP_DELAY_S)
    async with replica(test_settings, own_database) as server, idp.http_client(IDP_URL) as idp_http:

        async def token(keychain: KeychainClient) -> tuple[str, float]:
            started = time.perf_counter()
            value = await client_credentials_token(
                "crm",
                token_url=TOKEN_URL,
                client_id="worker",
                client_secret="s3cret-value",
                keychain=keychain,
                http_client=idp_http,
            )
            return value, time.perf_counter() - started

        first = KeychainClient(http_client=server.client)
        assert (await token(first))[0] == "at-first"  # the miss: fetched and cached
        await age_the_cached_token(own_database, test_settings.db_schema, "crm")
        # Each reader its own client, as separate worker processes would be.
        readers = [KeychainClient(http_client=server.client) for _ in range(READERS)]
        got = await asyncio.gather(*(token(r) for r in readers))
        assert [value for value, _ in got] == ["at-first"] * READERS
        assert max(seconds for _, seconds in got) < IDP_DELAY_S  # nobody waited for the endpoint

        async def refreshed() -> bool:
            return (await token(first))[0] == "at-second"

        await until(refreshed, timeout=5)
    assert len(idp.requests) == 2  # the first fetch, and one refresh for all twelve
    refreshes = server.process.metrics.registry.get_sample_value(
        "keychain_fill_leases_total", {"purpose": "refresh"}
    )
    assert refreshes == 1


async def test_a_refresh_ahead_finishes_before_its_client_closes(
    test_settings, own_database, tmp_path
):
    """The reader chosen to refresh answers at once and refreshes in the background; a worker
    that closes its client right after (`async with` around one step) still gets it written."""
    idp = token_endpoint(expires_in=3600, delay=IDP_DELAY_S)
    # No memory tier: every read sees the aged row at once.
    with (
        cluster.replicas(own_database, tmp_path, 1, memory_tier_max_entries="0") as (server,),
    ):
        async with idp.http_client(IDP_URL) as idp_http:

            async def one_step() -> str:
                async with KeychainClient(server.url) as keychain:  # its own pool, closed here
                    return await client_credentials_token(
                        "crm",
                        token_url=TOKEN_URL,
                        client_id="worker",
                        client_secret="s3cret-value",
                        keychain=keychain,
                        http_client=idp_http,
                    )

            assert await one_step() == "at-first"
            await age_the_cached_token(own_database, test_settings.db_schema, "crm")
            assert await one_step() == "at-first"  # chosen to refresh: answered from the cache
            assert len(idp.requests) == 2  # the refresh ran before the client closed
            assert await one_step() == "at-second"  # and was written


async def age_the_cached_token(url: str, schema: str, name: str) -> None:
    """Make the cached token 3,000 s old with 100 s left (its refresh window is the last 10-15%),
    and tell the servers, as a write would."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        key = await conn.fetchval(
            f"UPDATE {qualified_name(keychain, schema)} SET created_at = now() - interval '3000 s',"
            " expires_at = now() + interval '100 s' WHERE credential_name = $1 RETURNING cache_key",
            name,
        )
        await conn.execute(
            "SELECT pg_notify($1, json_build_object('keys', json_build_array($2::text))::text)",
            channel_name(schema),
            key,
        )
    finally:
        await conn.close()
