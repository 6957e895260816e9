"""The bench's database: KEYCHAIN_DATABASE_URL when set, else an embedded PostgreSQL of its own;
and the rows it writes with plain SQL, faster than any API could.

Everything the bench creates lives in schemas named keychain_bench*, dropped before and after
a run, so a run against a real database leaves its keychain schema alone.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from bench.floor import SCHEMA as FLOOR_SCHEMA
from bench.floor import TABLE as FLOOR_TABLE
from bench.floor import asyncpg_dsn

DATABASE_URL_ENV = "KEYCHAIN_DATABASE_URL"
# Rows written by SQL are sealed by no key: the bench never reads them, they only fill the table.
FILLER_KEY_ID = "bench-filler"


@contextmanager
def bench_database(workdir: Path) -> Iterator[tuple[str, str]]:
    """(database URL, where it came from) for the run's duration."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        yield url, DATABASE_URL_ENV
        return
    with warnings.catch_warnings():
        # platformdirs complains about XDG_RUNTIME_DIR, which pgserver does not need.
        warnings.simplefilter("ignore")
        import pgserver
    with pgserver.get_server(workdir / "postgres", cleanup_mode="stop") as postgres:
        yield postgres.get_uri(), f"embedded PostgreSQL in {workdir / 'postgres'}"


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(url))


async def drop_schemas(conn: asyncpg.Connection, schemas: list[str]) -> None:
    for schema in [*schemas, FLOOR_SCHEMA]:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def seed_floor(
    conn: asyncpg.Connection, key_prefix: str, key_suffix: str, count: int
) -> None:
    await conn.execute(
        f"INSERT INTO {FLOOR_TABLE} (key, data)"
        " SELECT $1 || i || $2, '{\"value\": \"sk-bench-' || md5(i::text) || '\"}'"
        " FROM generate_series(0, $3 - 1) AS i",
        key_prefix,
        key_suffix,
        count,
    )


async def insert_rows(
    conn: asyncpg.Connection, schema: str, key_prefix: str, count: int, *, expired: bool
) -> None:
    """`count` execution-scoped rows under `{key_prefix}{i}/versions/1:{execution}`, ten per
    execution, shaped as the server writes them; expired a minute ago, or live for a day."""
    expires = "now() - interval '1 minute'" if expired else "now() + interval '1 day'"
    await conn.execute(
        f'INSERT INTO "{schema}".keychain (cache_key, credential_name, credential_type, cache_type,'
        " scope_type, execution_id, data, key_id, ttl_seconds, expires_at, written_by, write_id)"
        " SELECT $1 || i || '/versions/1:' || (i / 10), $1 || i || '/versions/1', 'secret_manager',"
        f" 'secret', 'execution', i / 10, decode(repeat(md5(i::text), 4), 'hex'), $2, 3600, {expires},"
        " 'bench', decode(md5('w' || i), 'hex')"
        " FROM generate_series(0, $3 - 1) AS i",
        key_prefix,
        FILLER_KEY_ID,
        count,
    )
    # As autovacuum would soon after a bulk load: the planner sees the table as it is.
    await conn.execute(f'ANALYZE "{schema}".keychain')


async def count_expired(conn: asyncpg.Connection, schema: str) -> int:
    return await conn.fetchval(
        f'SELECT count(*) FROM "{schema}".keychain WHERE expires_at <= now()'
    )


async def any_expired(conn: asyncpg.Connection, schema: str) -> bool:
    """count_expired() > 0 at a fraction of its cost: it runs beside a measured load."""
    return await conn.fetchval(
        f'SELECT EXISTS (SELECT 1 FROM "{schema}".keychain WHERE expires_at <= now())'
    )
