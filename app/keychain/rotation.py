"""Re-sealing rows under the primary key, so an old key can leave the ring, and binding rows
sealed before writes were bound (migration 0002) to their write."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from app.crypto import KeyRing, bound_data, new_write_id
from app.db.engine import Database
from app.errors import UnreadableEntry
from app.invalidation import key_messages
from app.keychain.repository import KeychainRepository, columns

log = logging.getLogger(__name__)


@dataclass
class RotationResult:
    resealed: int = 0
    # Rows no configured key opens: left untouched for an operator, never deleted here.
    unreadable: int = 0


async def count_to_reseal(database: Database, keyring: KeyRing) -> int:
    async with database.transaction() as conn:
        return await KeychainRepository(conn).count_to_reseal(keyring.primary_key_id)


async def reseal_all(
    database: Database,
    keyring: KeyRing,
    batch_size: int,
    on_batch: Callable[[int], None] = lambda done: None,
) -> RotationResult:
    """Each batch is its own transaction, so a crash loses at most one batch of work and a
    rerun simply continues: rows already under the primary key are no longer selected."""
    result = RotationResult()
    after_key = ""
    while True:
        async with database.transaction() as conn:
            repository = KeychainRepository(conn)
            rows = await repository.to_reseal(keyring.primary_key_id, after_key, batch_size)
            for row in rows:
                try:
                    payload = keyring.open(row.data, bound_data(columns(row)))
                except UnreadableEntry as exc:
                    result.unreadable += 1
                    log.warning("cannot re-seal entry: %s", exc, extra={"cache_key": row.cache_key})
                    continue
                # Rows sealed before writes were bound get bound now; others keep their write
                # id, so hits counted in memory against it still land.
                write_id = row.write_id or new_write_id()
                sealed = keyring.seal(payload, bound_data({**columns(row), "write_id": write_id}))
                await repository.replace_sealed(
                    row.cache_key, sealed.envelope, sealed.key_id, write_id
                )
                result.resealed += 1
            # Servers holding the old envelopes in memory drop them.
            for message in key_messages([row.cache_key for row in rows]):
                await repository.announce(message)
        if not rows:
            return result
        after_key = rows[-1].cache_key
        on_batch(len(rows))
