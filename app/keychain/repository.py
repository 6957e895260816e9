"""SQL for the keychain table: one method per statement, on the caller's connection."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Executable,
    Interval,
    Result,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Update

from app.db.engine import LazyTransaction, raise_if_outage
from app.db.tables import ended_executions, fill_leases
from app.errors import InvalidEntry
from app.invalidation import Invalidation, channel_name, encode
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
    """Every column but the payload and its write id (a repository is made per request:
    compute this once)."""
    return tuple(c for c in table.c if c.name not in ("data", "write_id"))


# (cache key, write id) -> (hits, the last one's time): counts a process served from memory.
PendingHits = dict[tuple[str, bytes | None], tuple[int, datetime]]

# What a write sets from the caller's values; expires_at and the timestamps come from SQL.
_WRITTEN = (
    "cache_key",
    "credential_name",
    "credential_type",
    "cache_type",
    "scope_type",
    "execution_id",
    "parent_execution_id",
    "written_by",
    "write_id",
    "ttl_seconds",
    "data",
    "key_id",
)


def _written_values(table: Table) -> dict[str, Any]:
    """SET/VALUES of a write, from parameters named w_<column> (SQLAlchemy keeps a column's own
    name for itself). expires_at is the one sent, or now() + the TTL by the database's clock."""
    values: dict[str, Any] = {
        name: bindparam(f"w_{name}", type_=table.c[name].type) for name in _WRITTEN
    }
    values["expires_at"] = func.coalesce(
        bindparam("w_expires_at", type_=table.c.expires_at.type),
        func.now() + bindparam("w_ttl", type_=Interval()),
    )
    return dict(values, created_at=func.now(), accessed_at=func.now())


def _write_parameters(values: Mapping[str, Any]) -> dict[str, Any]:
    parameters = {f"w_{name}": values[name] for name in _WRITTEN}
    parameters.update(
        w_expires_at=values["expires_at"], w_ttl=timedelta(seconds=values["ttl_seconds"])
    )
    return parameters


# Statements built once per table, with bound parameters: building one per request cost the
# write path more than PostgreSQL took to run it (SQLAlchemy's cache key alone, about 0.1 ms).
@functools.cache
def _insert_new_statement(table: Table) -> Insert:
    return (
        insert(table)
        .values(_written_values(table))
        .on_conflict_do_nothing(index_elements=[table.c.cache_key])
        .returning(*_meta_columns(table))
    )


@functools.cache
def _replace_statement(table: Table) -> Update:
    values = _written_values(table)
    return (
        update(table)
        .where(table.c.cache_key == values.pop("cache_key"))
        .values(dict(values, access_count=0))
        .returning(*_meta_columns(table))
    )


@functools.cache
def _lock_statement(table: Table) -> Select[Any]:
    return (
        select(*_meta_columns(table), (table.c.expires_at > func.now()).label("live"))
        .where(table.c.cache_key == bindparam("key"))
        .with_for_update()
    )


@functools.cache
def _read_live_statement(table: Table) -> Select[Any]:
    return select(table).where(
        table.c.cache_key == bindparam("key"), table.c.expires_at > func.now()
    )


class KeychainRepository:
    def __init__(self, conn: AsyncConnection | LazyTransaction, table: Table) -> None:
        self.conn = conn
        self.table = table

    async def _execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Result[Any]:
        """Every statement goes through here, so database errors become domain errors once."""
        try:
            return await self.conn.execute(statement, parameters)
        except DBAPIError as exc:
            caller_error = _CALLER_ERRORS.get(getattr(exc.orig, "sqlstate", None) or "")
            if caller_error is not None:
                raise InvalidEntry(caller_error) from exc
            raise_if_outage(exc)
            raise

    async def commit(self) -> None:
        """End the caller's transaction here; the next statement begins another. A request about
        to wait commits first, so that it holds no connection while it waits."""
        if isinstance(self.conn, LazyTransaction):
            await self.conn.finish(None)
        else:
            await self.conn.commit()

    async def check_table(self) -> None:
        """Readiness: the database answers and has been migrated."""
        await self._execute(select(literal(1)).select_from(self.table).limit(0))

    async def get_and_touch(self, cache_key: str) -> Row[Any] | None:
        """Read a live row and count the hit in the same statement, so concurrent hits all count."""
        result = await self._execute(_touch_statement(self.table), {"key": cache_key})
        return result.one_or_none()

    async def read_live(self, cache_key: str) -> Mapping[str, Any] | None:
        """The live row, every column, without counting a hit (the memory tier counts)."""
        row = (
            await self._execute(_read_live_statement(self.table), {"key": cache_key})
        ).one_or_none()
        return None if row is None else row._mapping

    async def add_hits(self, hits: PendingHits) -> None:
        """Add counted hits to their rows in one statement; a row replaced since (another
        write id) or gone keeps nothing of them."""
        stmt = text(
            f"UPDATE {_qualified(self.table)} AS k"
            " SET access_count = k.access_count + v.hits, accessed_at = greatest(k.accessed_at, v.at)"
            " FROM unnest(CAST(:keys AS text[]), CAST(:write_ids AS bytea[]), CAST(:hits AS int[]),"
            " CAST(:ats AS timestamptz[])) AS v(cache_key, write_id, hits, at)"
            " WHERE k.cache_key = v.cache_key AND k.write_id IS NOT DISTINCT FROM v.write_id"
        )
        keys = list(hits)
        await self._execute(
            stmt,
            {
                "keys": [k for k, _ in keys],
                "write_ids": [w for _, w in keys],
                "hits": [hits[k][0] for k in keys],
                "ats": [hits[k][1] for k in keys],
            },
        )

    async def expires_at(self, cache_key: str) -> datetime | None:
        """Tell "expired, not yet swept" from "absent" after a miss."""
        t = self.table
        stmt = select(t.c.expires_at).where(t.c.cache_key == cache_key)
        return (await self._execute(stmt)).scalar_one_or_none()

    async def lock(self, cache_key: str) -> Row[Any] | None:
        """The row's metadata and whether it is live, locked until the transaction ends."""
        return (await self._execute(_lock_statement(self.table), {"key": cache_key})).one_or_none()

    async def insert_new(self, values: Mapping[str, Any]) -> Row[Any] | None:
        """Insert a new entry; None when the key is taken (the caller decides on replacing).

        An `expires_at` of None means now() + ttl_seconds, by the database's clock."""
        return (
            await self._execute(_insert_new_statement(self.table), _write_parameters(values))
        ).one_or_none()

    async def replace(self, values: Mapping[str, Any]) -> Row[Any]:
        """Overwrite the entry under the key: a new write, so its counters start again."""
        return (
            await self._execute(_replace_statement(self.table), _write_parameters(values))
        ).one()

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

    async def mark_ended(self, execution_id: int) -> None:
        ended = ended_executions(self.table)
        stmt = insert(ended).values(execution_id=execution_id).on_conflict_do_nothing()
        await self._execute(stmt)

    async def ended_among(self, execution_ids: tuple[int, ...]) -> int | None:
        """The first of these executions that has ended, or None."""
        ended = ended_executions(self.table)
        stmt = select(ended.c.execution_id).where(ended.c.execution_id.in_(execution_ids)).limit(1)
        return (await self._execute(stmt)).scalar_one_or_none()

    async def announce_swept(self) -> None:
        """Rows expired by the database's now() are gone: servers may drop theirs too."""
        stmt = text(
            "SELECT pg_notify(:channel, json_build_object('expired_before', extract(epoch FROM now()))::text)"
        )
        await self._execute(stmt, {"channel": channel_name(self.table.schema)})

    async def announce(self, message: Invalidation) -> None:
        """NOTIFY every server; delivered when (and only if) this transaction commits."""
        stmt = text("SELECT pg_notify(:channel, :payload)")
        await self._execute(
            stmt, {"channel": channel_name(self.table.schema), "payload": encode(message)}
        )

    async def take_fill_lease(
        self, cache_key: str, holder: str, lease_id: str, seconds: float
    ) -> tuple[bool, float]:
        """Take the key's fill lease unless a live one is held; whether it was taken, and the
        seconds left on the lease that stands (ours or the holder's), by the database's clock."""
        leases = fill_leases(self.table)
        expires_at = func.now() + timedelta(seconds=seconds)
        stmt = (
            insert(leases)
            .values(cache_key=cache_key, lease_id=lease_id, holder=holder, expires_at=expires_at)
            .on_conflict_do_update(
                index_elements=[leases.c.cache_key],
                set_={
                    "lease_id": lease_id,
                    "holder": holder,
                    "granted_at": func.now(),
                    "expires_at": expires_at,
                },
                where=leases.c.expires_at <= func.now(),
            )
            .returning(leases.c.lease_id)
        )
        if (await self._execute(stmt)).scalar_one_or_none() == lease_id:
            return True, seconds
        left = select(func.extract("epoch", leases.c.expires_at - func.now())).where(
            leases.c.cache_key == cache_key
        )
        seconds_left = (await self._execute(left)).scalar_one_or_none()
        # Released between the two statements: nothing stands, the next look may take it.
        return False, max(0.0, float(seconds_left or 0.0))

    async def end_fill_lease(self, cache_key: str, lease_id: str) -> float | None:
        """End this lease on the key; the seconds since it was granted, or None if it no longer
        stood (expired and taken over, or released)."""
        leases = fill_leases(self.table)
        stmt = (
            delete(leases)
            .where(leases.c.cache_key == cache_key, leases.c.lease_id == lease_id)
            .returning(func.extract("epoch", func.now() - leases.c.granted_at))
        )
        held = (await self._execute(stmt)).scalar_one_or_none()
        return None if held is None else float(held)

    async def delete_expired_fill_leases(self) -> int:
        leases = fill_leases(self.table)
        return (
            await self._execute(delete(leases).where(leases.c.expires_at <= func.now()))
        ).rowcount

    async def forget_ended_before(self, age_seconds: int) -> int:
        """Ended executions older than any token that could name them need not be kept."""
        ended = ended_executions(self.table)
        stmt = delete(ended).where(ended.c.ended_at < func.now() - timedelta(seconds=age_seconds))
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

    async def to_reseal(
        self, primary_key_id: str, after_key: str, batch_size: int
    ) -> list[Row[Any]]:
        """Rows to re-seal, in key order after `after_key` (keyset paging makes it resumable):
        sealed by another key, or sealed before writes were bound (no write_id).

        FOR UPDATE without SKIP LOCKED: a row held by a hit is waited for (milliseconds),
        never skipped, since paging moves past it for good."""
        t = self.table
        stmt = (
            select(t)
            .where(_needs_reseal(t, primary_key_id), t.c.cache_key > after_key)
            .order_by(t.c.cache_key)
            .limit(batch_size)
            .with_for_update()
        )
        return list((await self._execute(stmt)).all())

    async def count_to_reseal(self, primary_key_id: str) -> int:
        t = self.table
        stmt = select(func.count()).select_from(t).where(_needs_reseal(t, primary_key_id))
        return (await self._execute(stmt)).scalar_one()

    async def replace_sealed(
        self, cache_key: str, data: bytes, key_id: str, write_id: bytes
    ) -> None:
        """Swap the ciphertext only: TTL, counters and timestamps stay as they were."""
        t = self.table
        stmt = (
            update(t)
            .where(t.c.cache_key == cache_key)
            .values(data=data, key_id=key_id, write_id=write_id)
        )
        await self._execute(stmt)

    async def delete_credentials(
        self, names: Sequence[str], prefixes: Sequence[str] = (), scope_type: str | None = None
    ) -> list[str]:
        """Delete the entries of these credential names and of names starting with a prefix
        (in one scope, or all), live or expired; answers their cache keys."""
        t = self.table
        # autoescape: '_' and '%' in a name are themselves, not LIKE wildcards.
        matches = [t.c.credential_name.startswith(prefix, autoescape=True) for prefix in prefixes]
        if names:
            matches.append(t.c.credential_name.in_(names))
        if not matches:
            return []
        stmt = delete(t).where(or_(*matches))
        if scope_type is not None:
            stmt = stmt.where(t.c.scope_type == scope_type)
        return list((await self._execute(stmt.returning(t.c.cache_key))).scalars())


def _qualified(t: Table) -> str:
    return f'"{t.schema}"."{t.name}"' if t.schema else f'"{t.name}"'


def _needs_reseal(t: Table, primary_key_id: str) -> Any:
    return or_(t.c.key_id != primary_key_id, t.c.write_id.is_(None))
