"""Deleting expired rows. Correctness never depends on this: every read filters on expires_at."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.db.engine import Database
from app.errors import DatabaseUnavailable
from app.keychain.repository import KeychainRepository
from app.metrics import KeychainMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    deleted: int
    # False when another replica held the sweep lock, so this pass did nothing.
    swept: bool


async def sweep_once(
    database: Database,
    batch_size: int,
    metrics: KeychainMetrics | None = None,
    *,
    ended_retention_seconds: int,
) -> SweepResult:
    """Delete expired rows batch by batch, each batch its own short transaction; with the last
    batch, forget executions that ended longer ago than any of their tokens can live, and fill
    leases that ran out.

    Every pass counts once as swept, skipped or failed; rows count as each batch commits.
    """
    metrics = metrics if metrics is not None else KeychainMetrics()
    deleted = 0
    try:
        while True:
            async with database.transaction() as conn:
                repository = KeychainRepository(conn)
                if not await repository.try_sweep_lock():
                    if deleted:  # another replica took over between our batches
                        break
                    log.info("sweep skipped: another replica is sweeping")
                    metrics.sweep("skipped")
                    return SweepResult(deleted=0, swept=False)
                batch = await repository.delete_expired(batch_size)
                if batch:
                    await repository.announce_swept()
                if batch < batch_size:
                    await repository.forget_ended_before(ended_retention_seconds)
                    await repository.delete_expired_fill_leases()
            deleted += batch
            metrics.rows_swept(batch)
            if batch < batch_size:
                break
    except Exception:  # not cancellation: a shutdown mid-sweep is not a failed sweep
        metrics.sweep("failed")
        raise
    metrics.sweep("swept")
    log.info("sweep done", extra={"rows_swept": deleted})
    return SweepResult(deleted=deleted, swept=True)


async def run_sweeper(
    database: Database,
    interval: float,
    batch_size: int,
    metrics: KeychainMetrics | None = None,
    *,
    ended_retention_seconds: int,
) -> None:
    """Sweep every `interval` seconds until cancelled; a failed pass is logged and retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(
                database,
                batch_size,
                metrics,
                ended_retention_seconds=ended_retention_seconds,
            )
        except DatabaseUnavailable:
            log.warning("sweep skipped: the database is unreachable")
        except Exception:
            log.exception("sweep failed")
