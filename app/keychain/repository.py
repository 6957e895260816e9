"""SQL for the keychain table: one method per statement, on the caller's connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Alias,
    CursorResult,
    DateTime,
    Executable,
    Integer,
    Interval,
    LargeBinary,
    Row,
    Text,
    and_,
    bindparam,
    column,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import KeyedColumnElement

from app.db.engine import LazyTransaction, raise_if_outage
from app.db.tables import ended_executions, fill_leases, keychain, schema_of
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


# Statements name the table through this alias. The engine writes the schema into each
# statement as it runs (schema_translate_map), at every mention of the table, and a column
# qualified by the table's own name is one: about 1 us each, 20 us for a read that names
# every column.
t = cast(Alias, keychain.alias("k"))  # typed as what update() and delete() take

# Statements built once, at import, with bound parameters: the hit path is hot, and building
# a statement per request cost more (about 0.3 ms here) than PostgreSQL took to run it.
_TOUCH = (
    update(t)
    .where(t.c.cache_key == bindparam("key"), t.c.expires_at > func.now())
    .values(access_count=t.c.access_count + 1, accessed_at=func.now())
    .returning(*t.c)
)

# Every column but the payload and its write id.
_META_COLUMNS: tuple[KeyedColumnElement[Any], ...] = tuple(
    c for c in t.c if c.name not in ("data", "write_id")
)

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


def _written_values() -> dict[str, Any]:
    """SET/VALUES of a write, from parameters named w_<column> (SQLAlchemy keeps a column's own
    name for itself). expires_at is the one sent, or now() + the TTL by the database's clock."""
    values: dict[str, Any] = {
        name: bindparam(f"w_{name}", type_=t.c[name].type) for name in _WRITTEN
    }
    values["expires_at"] = func.coalesce(
        bindparam("w_expires_at", type_=t.c.expires_at.type),
        func.now() + bindparam("w_ttl", type_=Interval()),
    )
    return dict(values, created_at=func.now(), accessed_at=func.now())


def _write_parameters(values: Mapping[str, Any]) -> dict[str, Any]:
    parameters = {f"w_{name}": values[name] for name in _WRITTEN}
    parameters.update(
        w_expires_at=values["expires_at"], w_ttl=timedelta(seconds=values["ttl_seconds"])
    )
    return parameters


# An INSERT cannot take the alias: its RETURNING names the columns bare, for the same reason.
_INSERT_NEW = (
    insert(keychain)
    .values(_written_values())
    .on_conflict_do_nothing(index_elements=[keychain.c.cache_key])
    .returning(*(column(c.name, c.type) for c in _META_COLUMNS))
)


def _replace() -> Update:
    values = _written_values()
    return (
        update(t)
        .where(t.c.cache_key == values.pop("cache_key"))
        .values(dict(values, access_count=0))
        .returning(*_META_COLUMNS)
    )


_REPLACE = _replace()

_LOCK = (
    select(*_META_COLUMNS, (t.c.expires_at > func.now()).label("live"))
    .where(t.c.cache_key == bindparam("key"))
    .with_for_update()
)

_READ_LIVE = select(t).where(t.c.cache_key == bindparam("key"), t.c.expires_at > func.now())


def _add_hits() -> Update:
    """Counted hits as a relation v(cache_key, write_id, hits, at) of four arrays, one row
    per key, added to their rows."""
    hits = (
        func.unnest(
            bindparam("keys", type_=ARRAY(Text)),
            bindparam("write_ids", type_=ARRAY(LargeBinary)),
            bindparam("hits", type_=ARRAY(Integer)),
            bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
        )
        .table_valued(
            column("cache_key", Text),
            column("write_id", LargeBinary),
            column("hits", Integer),
            column("at", DateTime(timezone=True)),
        )
        .render_derived(name="v")
    )
    return (
        update(t)
        .where(
            t.c.cache_key == hits.c.cache_key, t.c.write_id.is_not_distinct_from(hits.c.write_id)
        )
        .values(
            access_count=t.c.access_count + hits.c.hits,
            accessed_at=func.greatest(t.c.accessed_at, hits.c.at),
        )
    )


_ADD_HITS = _add_hits()


# SQLAlchemy types a result by its statement's columns; _execute takes any statement.
AnyResult = CursorResult[*tuple[Any, ...]]
AnyRow = Row[*tuple[Any, ...]]


def columns(row: AnyRow) -> Mapping[str, Any]:
    """A row's columns by name (SQLAlchemy types the keys as names or Column objects)."""
    return cast("Mapping[str, Any]", row._mapping)


class KeychainRepository:
    def __init__(self, conn: AsyncConnection | LazyTransaction) -> None:
        self.conn = conn

    async def _execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> AnyResult:
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
        await self.conn.commit()

    async def check_table(self) -> None:
        """Readiness: the database answers and has been migrated."""
        await self._execute(select(literal(1)).select_from(t).limit(0))

    async def get_and_touch(self, cache_key: str) -> AnyRow | None:
        """Read a live row and count the hit in the same statement, so concurrent hits all count."""
        result = await self._execute(_TOUCH, {"key": cache_key})
        return result.one_or_none()

    async def read_live(self, cache_key: str) -> Mapping[str, Any] | None:
        """The live row, every column, without counting a hit (the memory tier counts)."""
        row = (await self._execute(_READ_LIVE, {"key": cache_key})).one_or_none()
        return None if row is None else columns(row)

    async def add_hits(self, hits: PendingHits) -> None:
        """Add counted hits to their rows in one statement; a row replaced since (another
        write id) or gone keeps nothing of them."""
        keys = list(hits)
        await self._execute(
            _ADD_HITS,
            {
                "keys": [k for k, _ in keys],
                "write_ids": [w for _, w in keys],
                "hits": [hits[k][0] for k in keys],
                "ats": [hits[k][1] for k in keys],
            },
        )

    async def expires_at(self, cache_key: str) -> datetime | None:
        """Tell "expired, not yet swept" from "absent" after a miss."""
        stmt = select(t.c.expires_at).where(t.c.cache_key == cache_key)
        return (await self._execute(stmt)).scalar_one_or_none()

    async def lock(self, cache_key: str) -> AnyRow | None:
        """The row's metadata and whether it is live, locked until the transaction ends."""
        return (await self._execute(_LOCK, {"key": cache_key})).one_or_none()

    async def insert_new(self, values: Mapping[str, Any]) -> AnyRow | None:
        """Insert a new entry; None when the key is taken (the caller decides on replacing).

        An `expires_at` of None means now() + ttl_seconds, by the database's clock."""
        return (await self._execute(_INSERT_NEW, _write_parameters(values))).one_or_none()

    async def replace(self, values: Mapping[str, Any]) -> AnyRow:
        """Overwrite the entry under the key: a new write, so its counters start again."""
        return (await self._execute(_REPLACE, _write_parameters(values))).one()

    async def delete(self, cache_key: str) -> bool:
        result = await self._execute(delete(t).where(t.c.cache_key == cache_key))
        return result.rowcount > 0

    async def delete_execution(self, execution_id: int) -> int:
        stmt = delete(t).where(
            or_(t.c.execution_id == execution_id, t.c.parent_execution_id == execution_id)
        )
        return (await self._execute(stmt)).rowcount

    async def mark_ended(self, execution_id: int) -> None:
        stmt = insert(ended_executions).values(execution_id=execution_id).on_conflict_do_nothing()
        await self._execute(stmt)

    async def ended_among(self, execution_ids: tuple[int, ...]) -> int | None:
        """The first of these executions that has ended, or None."""
        stmt = (
            select(ended_executions.c.execution_id)
            .where(ended_executions.c.execution_id.in_(execution_ids))
            .limit(1)
        )
        return (await self._execute(stmt)).scalar_one_or_none()

    def _channel(self) -> str:
        # The channel of the schema this connection's engine maps the tables into.
        return channel_name(schema_of(self.conn.engine))

    async def announce_swept(self) -> None:
        """Rows expired by the database's now() are gone: servers may drop theirs too."""
        stmt = text(
            "SELECT pg_notify(:channel, json_build_object('expired_before', extract(epoch FROM now()))::text)"
        )
        await self._execute(stmt, {"channel": self._channel()})

    async def announce(self, message: Invalidation) -> None:
        """NOTIFY every server; delivered when (and only if) this transaction commits."""
        stmt = text("SELECT pg_notify(:channel, :payload)")
        await self._execute(stmt, {"channel": self._channel(), "payload": encode(message)})

    async def take_fill_lease(
        self, cache_key: str, holder: str, lease_id: str, seconds: float
    ) -> tuple[bool, float]:
        """Take the key's fill lease unless a live one is held; whether it was taken, and the
        seconds left on the lease that stands (ours or the holder's), by the database's clock."""
        expires_at = func.now() + timedelta(seconds=seconds)
        stmt = (
            insert(fill_leases)
            .values(cache_key=cache_key, lease_id=lease_id, holder=holder, expires_at=expires_at)
            .on_conflict_do_update(
                index_elements=[fill_leases.c.cache_key],
                set_={
                    "lease_id": lease_id,
                    "holder": holder,
                    "granted_at": func.now(),
                    "expires_at": expires_at,
                },
                where=fill_leases.c.expires_at <= func.now(),
            )
            .returning(fill_leases.c.lease_id)
        )
        if (await self._execute(stmt)).scalar_one_or_none() == lease_id:
            return True, seconds
        left = select(func.extract("epoch", fill_leases.c.expires_at - func.now())).where(
            fill_leases.c.cache_key == cache_key
        )
        seconds_left = (await self._execute(left)).scalar_one_or_none()
        # Released between the two statements: nothing stands, the next look may take it.
        return False, max(0.0, float(seconds_left or 0.0))

    async def end_fill_lease(self, cache_key: str, lease_id: str) -> float | None:
        """End this lease on the key; the seconds since it was granted, or None if it no longer
        stood (expired and taken over, or released)."""
        stmt = (
            delete(fill_leases)
            .where(fill_leases.c.cache_key == cache_key, fill_leases.c.lease_id == lease_id)
            .returning(func.extract("epoch", func.now() - fill_leases.c.granted_at))
        )
        held = (await self._execute(stmt)).scalar_one_or_none()
        return None if held is None else float(held)

    async def delete_expired_fill_leases(self) -> int:
        return (
            await self._execute(delete(fill_leases).where(fill_leases.c.expires_at <= func.now()))
        ).rowcount

    async def forget_ended_before(self, age_seconds: int) -> int:
        """Ended executions older than any token that could name them need not be kept."""
        stmt = delete(ended_executions).where(
            ended_executions.c.ended_at < func.now() - timedelta(seconds=age_seconds)
        )
        return (await self._execute(stmt)).rowcount

    async def list_meta(self, query: EntryQuery) -> tuple[list[AnyRow], int]:
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
            select(*_META_COLUMNS)
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
        stmt = (
            select(t.c.scope_type, func.count())
            .where(t.c.expires_at > func.now())
            .group_by(t.c.scope_type)
        )
        return [(scope, count) for scope, count in (await self._execute(stmt)).all()]

    async def entry_counts(self) -> list[AnyRow]:
        """Per scope and cache type: live rows, expired rows not yet swept, and total hits."""
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

    async def most_accessed(self, limit: int) -> list[AnyRow]:
        """Metadata of the most-read entries (never `data`), live or not yet swept."""
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
        # The table itself, not the alias the DELETE names: the subquery reads rows of its own.
        doomed = (
            select(keychain.c.cache_key)
            .where(keychain.c.expires_at <= func.now())
            .order_by(keychain.c.expires_at)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        result = await self._execute(delete(t).where(t.c.cache_key.in_(doomed.scalar_subquery())))
        return result.rowcount

    async def to_reseal(self, primary_key_id: str, after_key: str, batch_size: int) -> list[AnyRow]:
        """Rows to re-seal, in key order after `after_key` (keyset paging makes it resumable):
        sealed by another key, or sealed before writes were bound (no write_id).

        FOR UPDATE without SKIP LOCKED: a row held by a hit is waited for (milliseconds),
        never skipped, since paging moves past it for good."""
        stmt = (
            select(t)
            .where(_needs_reseal(primary_key_id), t.c.cache_key > after_key)
            .order_by(t.c.cache_key)
            .limit(batch_size)
            .with_for_update()
        )
        return list((await self._execute(stmt)).all())

    async def count_to_reseal(self, primary_key_id: str) -> int:
        stmt = select(func.count()).select_from(t).where(_needs_reseal(primary_key_id))
        count: int = (await self._execute(stmt)).scalar_one()
        return count

    async def replace_sealed(
        self, cache_key: str, data: bytes, key_id: str, write_id: bytes
    ) -> None:
        """Swap the ciphertext only: TTL, counters and timestamps stay as they were."""
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


def _needs_reseal(primary_key_id: str) -> Any:
    return or_(t.c.key_id != primary_key_id, t.c.write_id.is_(None))
