"""`keychain stats`: what the cache holds, by scope and type, and its most-read keys.

No key ring is needed: nothing here opens a payload.
"""

from __future__ import annotations

from typing import Any

from app.db.tables import CACHE_TYPES, SCOPE_TYPES
from app.keychain.repository import KeychainRepository


async def collect_stats(repository: KeychainRepository, top: int) -> dict[str, Any]:
    """Counts and metadata only: stats never read, decrypt or print an entry's data."""
    groups = await repository.entry_counts()
    most = await repository.most_accessed(top) if top else []
    by_scope = dict.fromkeys(SCOPE_TYPES, 0)
    by_cache_type = dict.fromkeys(CACHE_TYPES, 0)
    rows = []
    for g in groups:
        by_scope[g.scope_type] = by_scope.get(g.scope_type, 0) + g.live
        by_cache_type[g.cache_type] = by_cache_type.get(g.cache_type, 0) + g.live
        rows.append(
            {
                "scope_type": g.scope_type,
                "cache_type": g.cache_type,
                "live": g.live,
                "expired_unswept": g.expired,
                "hits": int(g.hits),
            }
        )
    return {
        "live_entries": sum(by_scope.values()),
        "live_by_scope": by_scope,
        "live_by_cache_type": by_cache_type,
        "expired_unswept": sum(r["expired_unswept"] for r in rows),
        # access_count restarts at 0 when an entry is rewritten, and leaves with the row.
        "hits": sum(r["hits"] for r in rows),
        "by_scope_and_cache_type": rows,
        "top_keys": [dict(r._mapping) for r in most],
    }
