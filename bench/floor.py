"""The floors Keychain is measured against: a minimal Litestar app on raw asyncpg, on a table
of its own in the same database, served by uvicorn (uvloop, httptools) as issue 13 measured it,
or by granian, as `keychain serve` serves.

    GET  /ping          no I/O: the HTTP floor
    GET  /ready         SELECT true, as Keychain's /ready: the bench waits for it
    GET  /floor/{key}   one UPDATE ... RETURNING that counts the hit, autocommit: the DB floor
    POST /floor/{key}   one INSERT ... ON CONFLICT DO UPDATE: the upsert floor

`python -m bench.floor PORT [uvicorn|granian]` with the database in BENCH_FLOOR_DATABASE_URL;
bench.run starts it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import uvicorn
from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException

from tests.local_server import LocalKeychainServer

DATABASE_URL_ENV = "BENCH_FLOOR_DATABASE_URL"
SCHEMA = "keychain_bench_floor"
TABLE = f"{SCHEMA}.entry"
# As many connections as a Keychain server's pool (KEYCHAIN_DB_POOL_SIZE's default).
POOL_SIZE = 10

CREATE = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (
    key text PRIMARY KEY,
    data text NOT NULL,
    access_count integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    accessed_at timestamptz NOT NULL DEFAULT now()
)"""
READ = f"""
UPDATE {TABLE} SET access_count = access_count + 1, accessed_at = now()
WHERE key = $1 RETURNING data, access_count, accessed_at"""
UPSERT = f"""
INSERT INTO {TABLE} (key, data) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE
SET data = excluded.data, access_count = 0, created_at = now(), accessed_at = now()
RETURNING (xmax = 0) AS created"""


def asyncpg_dsn(url: str) -> str:
    """Keychain accepts postgresql+asyncpg:// URLs; asyncpg itself wants postgresql://."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_table(conn: asyncpg.Connection) -> None:
    await conn.execute(CREATE)


def create_app(database_url: str) -> Litestar:
    async def open_pool(app: Litestar) -> None:
        app.state.pool = await asyncpg.create_pool(
            asyncpg_dsn(database_url), min_size=POOL_SIZE, max_size=POOL_SIZE
        )

    async def close_pool(app: Litestar) -> None:
        await app.state.pool.close()

    @get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @get("/ready")
    async def ready(state: State) -> dict[str, bool]:
        return {"ok": await state.pool.fetchval("SELECT true")}

    @get("/floor/{key:path}")
    async def read(key: str, state: State) -> dict[str, Any]:
        row = await state.pool.fetchrow(READ, key.lstrip("/"))
        if row is None:
            raise NotFoundException(f"no entry {key}")
        return {"cache_key": key, **row}

    @post("/floor/{key:path}", status_code=200)
    async def write(key: str, data: dict[str, Any], state: State) -> dict[str, Any]:
        token_data = msgspec.json.encode(data.get("token_data")).decode()
        created = await state.pool.fetchval(UPSERT, key.lstrip("/"), token_data)
        return {"cache_key": key, "created": created}

    return Litestar([ping, ready, read, write], on_startup=[open_pool], on_shutdown=[close_pool])


class FloorServer(LocalKeychainServer):
    """The floor app in a process of its own on 127.0.0.1 and a free port, waited for, stopped
    and its log read as a Keychain server's are."""

    what = "the floor app (bench/floor.py)"

    def __init__(self, data_dir: Path, database_url: str, server: str = "uvicorn") -> None:
        super().__init__(data_dir)
        self.env[DATABASE_URL_ENV] = database_url
        self.server = server

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.floor", str(self.port), self.server],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()


def app_from_environment() -> Litestar:
    """granian's --factory target."""
    return create_app(os.environ[DATABASE_URL_ENV])


def main() -> None:
    port, server = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "uvicorn"
    if server == "granian":
        command = [
            "granian",
            "--interface",
            "asgi",
            "--loop",
            "uvloop",
            "--workers",
            "1",
            "--log-level",
            "warning",
        ]
        command += [
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--factory",
            "bench.floor:app_from_environment",
        ]
        os.execv(sys.executable, [sys.executable, "-m", *command])
    uvicorn.run(
        app_from_environment(),
        host="127.0.0.1",
        port=int(port),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
