"""SQL for the keychain table: one method per statement, on the caller's connection."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Executable,
    Result,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Update

from app.db.engine import translated
from app.errors import InvalidEntry
from app.keychain.schemas import EntryQuery

SWEEP_LOCK_ID = 0x6B63_7377_6565_70  # "kcsweep": one sweeping replica at a time

# SQLSTATE -> what the caller did wrong; outages become DatabaseUnavailable; anything else
# is ours and propagates.
_CALLER_ERRORS = {
    "23514": "the entry breaks a table rule (scope or cache type)",
    "22003": "a number is out of range",
    "22P05": "the payload holds characters PostgreSQL cannot store",
}


@functools.cache
def _touch_statement(table: Table) -> Update:
    """Built once per table: the hit path is hot, and building a statement costs more
    (about 0.3 ms here) than PostgreSQL takes to run it."""
    return (
        update(table)
        .where(table.c.cache_key == bindparam("key"), table.c.expires_at > func.now())
        .values(access_count=table.c.access_count + 1, accessed_at=func.now())
        .returning(*table.c)
    )


@functools.cache
def _meta_columns(table: Table) -> tuple[Column[Any], ...]:
    """Every column but the payload (a repository is made per request: compute this once)."""
    return tuple(c for c in table.c if c.name != "data")


class KeychainRepository:
    def __init__(self, conn: AsyncConnection, table: Table) -> None:
        self.conn = conn
        self.table = table

    async def _execute(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> Result[Any]:
        """Every statement goes through here, so database errors become domain errors once."""
        try:
            return await self.conn.execute(statement, parameters)
        except DBAPIError as exc:
            caller_error = _CALLER_ERRORS.get(getattr(exc.orig, "sqlstate", None) or "")
            if caller_error is not None:
                raise InvalidEntry(caller_error) from exc
            raise translated(exc) from exc

    async def check_table(self) -> None:
        """Readiness: the database answers and has been migrated."""
        await self._execute(select(literal(1)).select_from(self.table).limit(0))

    async def get_and_touch(self, cache_key: str) -> Row[Any] | None:
        """Read a live row and count the hit in the same statement, so concurrent hits all count."""
        result = await self._execute(_touch_statement(self.table), {"key": cache_key})
        return result.one_or_none()

    async def expires_at(self, cache_key: str) -> datetime | None:
        """Tell "expired, not yet swept" from "absent" after a miss."""
        t = self.table
        stmt = select(t.c.expires_at).where(t.c.cache_key == cache_key)
        return (await self._execute(stmt)).scalar_one_or_none()

    async def upsert(self, values: Mapping[str, Any]) -> tuple[Row[Any], bool]:
        """Create or replace; answers the row's metadata and whether it was created.

        An `expires_at` of None means now() + ttl_seconds, by the database's clock."""
        t = self.table
        values = dict(values)
        if values["expires_at"] is None:
            values["expires_at"] = func.now() + timedelta(seconds=values["ttl_seconds"])
        stmt = insert(t).values(**values, created_at=func.now(), accessed_at=func.now())
        replaced = {name: stmt.excluded[name] for name in values if name != "cache_key"}
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.cache_key],
            set_={**replaced, "created_at": func.now(), "accessed_at": func.now(), "access_count": 0},
        ).returning(*_meta_columns(t), literal_column("xmax = 0").label("inserted"))
        row = (await self._execute(stmt)).one()
        return row, row.inserted

    async def delete(self, cache_key: str) -> bool:
        t = self.table
        result = await self._execute(delete(t).where(t.c.cache_key == cache_key))
        return result.rowcount > 0

    async def delete_execution(self, execution_id: int) -> int:
        t = self.table
        stmt = delete(t).where(
            or_(t.c.execution_id == execution_id, t.c.parent_execution_id == execution_id)
        )
        return (await self._execute(stmt)).rowcount

    async def list_meta(self, query: EntryQuery) -> tuple[list[Row[Any]], int]:
        t = self.table
        conditions = []
        if query.execution_id is not None:
            conditions.append(
                or_(
                    t.c.execution_id == query.execution_id,
                    t.c.parent_execution_id == query.execution_id,
                )
            )
        if query.scope_type is not None:
            conditions.append(t.c.scope_type == query.scope_type)
        if query.credential_name is not None:
            conditions.append(t.c.credential_name == query.credential_name)
        if not query.include_expired:
            conditions.append(t.c.expires_at > func.now())
        where = and_(True, *conditions)
        page = (
            select(*_meta_columns(t))
            .where(where)
            .order_by(t.c.cache_key)
            .limit(query.limit)
            .offset(query.offset)
        )
        rows = (await self._execute(page)).all()
        total = (await self._execute(select(func.count()).select_from(t).where(where))).scalar_one()
        return list(rows), total

    async def live_entries_by_scope(self) -> list[tuple[str, int]]:
        """For the entries gauge, at every scrape: one GROUP BY on the expires_at index."""
        t = self.table
        stmt = (
            select(t.c.scope_type, func.count())
            .where(t.c.expires_at > func.now())
            .group_by(t.c.scope_type)
        )
        return [(scope, count) for scope, count in (await self._execute(stmt)).all()]

    async def entry_counts(self) -> list[Row[Any]]:
        """Per scope and cache type: live rows, expired rows not yet swept, and total hits."""
        t = self.table
        live = t.c.expires_at > func.now()
        stmt = (
            select(
                t.c.scope_type,
                t.c.cache_type,
                func.count().filter(live).label("live"),
                func.count().filter(~live).label("expired"),
                func.coalesce(func.sum(t.c.access_count), 0).label("hits"),
            )
            .group_by(t.c.scope_type, t.c.cache_type)
            .order_by(t.c.scope_type, t.c.cache_type)
        )
        return list((await self._execute(stmt)).all())

    async def most_accessed(self, limit: int) -> list[Row[Any]]:
        """Metadata of the most-read entries (never `data`), live or not yet swept."""
        t = self.table
        stmt = (
            select(
                t.c.cache_key,
                t.c.credential_name,
                t.c.cache_type,
                t.c.scope_type,
                t.c.execution_id,
                t.c.access_count,
                t.c.accessed_at,
                t.c.expires_at,
                (t.c.expires_at <= func.now()).label("expired"),
            )
            .order_by(t.c.access_count.desc(), t.c.cache_key)
            .limit(limit)
        )
        return list((await self._execute(stmt)).all())

    async def try_sweep_lock(self) -> bool:
        """Transaction-scoped, so a crashed sweeper can never hold it."""
        stmt = text("SELECT pg_try_advisory_xact_lock(:id)")
        return bool((await self._execute(stmt, {"id": SWEEP_LOCK_ID})).scalar_one())

    async def delete_expired(self, batch_size: int) -> int:
        t = self.table
        doomed = (
            select(t.c.cache_key)
            .where(t.c.expires_at <= func.now())
            .order_by(t.c.expires_at)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        result = await self._execute(delete(t).where(t.c.cache_key.in_(doomed.scalar_subquery())))
        return result.rowcount

    async def sealed_by_other_keys(
        self, primary_key_id: str, after_key: str, batch_size: int
    ) -> list[Row[Any]]:
        """Rows to re-seal, in key order after `after_key` (keyset paging makes it resumable).

        FOR UPDATE without SKIP LOCKED: a row held by a hit is waited for (milliseconds),
        never skipped, since paging moves past it for good."""
        t = self.table
        stmt = (
            select(t.c.cache_key, t.c.data)
            .where(t.c.key_id != primary_key_id, t.c.cache_key > after_key)
            .order_by(t.c.cache_key)
            .limit(batch_size)
            .with_for_update()
        )
        return list((await self._execute(stmt)).all())

    async def count_sealed_by_other_keys(self, primary_key_id: str) -> int:
        t = self.table
        stmt = select(func.count()).select_from(t).where(t.c.key_id != primary_key_id)
        return (await self._execute(stmt)).scalar_one()

    async def replace_sealed(self, cache_key: str, data: bytes, key_id: str) -> None:
        """Swap the ciphertext only: TTL, counters and timestamps stay as they were."""
        t = self.table
        await self._execute(update(t).where(t.c.cache_key == cache_key).values(data=data, key_id=key_id))
