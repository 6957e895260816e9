"""The Alembic migrations are what every test runs on; here they are checked on their own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from alembic import command
from app.cli import alembic_config
from app.db.tables import in_schema, keychain

# Not the default schema: migrations, and the comparison with app.db.tables, follow the setting.
SCHEMA = "keychain_migrations"


def _config(url: str) -> Config:
    return alembic_config(SCHEMA, url)


def _inspect(url: str, fn):
    async def run():
        engine = create_async_engine(url, poolclass=NullPool, execution_options=in_schema(SCHEMA))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_there_is_a_single_head(repo_root):
    assert (
        len(ScriptDirectory.from_config(_config("postgresql+asyncpg://unused/db")).get_heads()) == 1
    )


def test_alembic_ini_and_keychain_migrate_run_the_same_migrations(repo_root):
    """Developers run `alembic` on alembic.ini; `keychain migrate` on the migrations packaged in
    app/: one directory, not a copy that could drift."""
    packaged = ScriptDirectory.from_config(_config("postgresql+asyncpg://unused/db"))
    by_hand = ScriptDirectory.from_config(Config(str(repo_root / "alembic.ini")))
    assert Path(packaged.dir).samefile(by_hand.dir)


def test_upgrade_matches_the_tables_and_downgrade_removes_them(make_empty_database):
    url = make_empty_database()
    config = _config(url)
    command.upgrade(config, "head")

    # Autogenerate through env.py finds nothing to do: the tables the migrations made in the
    # configured schema are the ones app.db.tables defines. A table of someone else's in the
    # schema (it is the workflow platform's, noetl, by default) is left out of the comparison.
    def add_platform_table(sync_conn):
        sync_conn.execute(text(f'CREATE TABLE "{SCHEMA}".platform_jobs (id int)'))
        sync_conn.commit()

    _inspect(url, add_platform_table)
    command.check(config)

    def shape(sync_conn):
        inspector = inspect(sync_conn)
        return {
            "checks": sorted(
                c["name"] for c in inspector.get_check_constraints("keychain", schema=SCHEMA)
            ),
            "indexes": sorted(i["name"] for i in inspector.get_indexes("keychain", schema=SCHEMA)),
        }

    assert _inspect(url, shape) == {
        "checks": [
            "keychain_cache_type_check",
            "keychain_execution_scope_has_id_check",
            "keychain_scope_type_check",
        ],
        "indexes": [
            "ix_keychain_credential_name",
            "ix_keychain_execution_id",
            "ix_keychain_expires_at",
            "ix_keychain_parent_execution_id",
        ],
    }

    command.downgrade(config, "base")
    assert not _inspect(url, lambda c: inspect(c).has_table("keychain", schema=SCHEMA))
    # Up again after down: every migration's downgrade really undoes it.
    command.upgrade(config, "head")
    assert _inspect(url, lambda c: inspect(c).has_table("keychain", schema=SCHEMA))


def test_concurrent_migrators_wait_for_each_other(make_empty_database):
    """Several pods or a retried Helm hook may migrate at once: the advisory lock queues them."""
    url = make_empty_database()
    keychain = Path(sys.executable).with_name("keychain")
    env = {**os.environ, "KEYCHAIN_DATABASE_URL": url, "KEYCHAIN_SCHEMA": SCHEMA}
    migrators = [
        subprocess.Popen([str(keychain), "migrate"], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for migrator in migrators:
        _, stderr = migrator.communicate(timeout=120)
        assert migrator.returncode == 0, stderr
    assert _inspect(url, lambda c: inspect(c).has_table("keychain", schema=SCHEMA))


def test_rows_from_before_0002_are_attributed_to_unknown_writers(make_empty_database):
    """Expand (0002: nullable columns) then contract (0003: backfill, default, NOT NULL)."""
    url = make_empty_database()
    config = _config(url)
    command.upgrade(config, "0001")

    def insert_row(sync_conn):
        # Only the columns 0001 made: the table's later ones are left out of the INSERT.
        sync_conn.execute(
            insert(keychain).values(
                cache_key="old:global",
                credential_name="old",
                credential_type="bearer",
                cache_type="secret",
                scope_type="global",
                data=b"\x00",
                key_id="k1",
                ttl_seconds=60,
                expires_at=func.now(),
            )
        )
        sync_conn.commit()

    _inspect(url, insert_row)
    command.upgrade(config, "head")

    def writers(sync_conn):
        columns = {c["name"]: c for c in inspect(sync_conn).get_columns("keychain", schema=SCHEMA)}
        rows = sync_conn.execute(select(keychain.c.written_by, keychain.c.write_id)).all()
        return columns["written_by"]["nullable"], [tuple(r) for r in rows]

    assert _inspect(url, writers) == (False, [("unknown", None)])
    command.downgrade(config, "0001")
    assert _inspect(
        url,
        lambda c: (
            "written_by"
            not in {x["name"] for x in inspect(c).get_columns("keychain", schema=SCHEMA)}
        ),
    )
