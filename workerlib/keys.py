"""The one cache-key format, shared by fetch_secret, OAuth2 tokens and CredentialCache.

It is the original worker's format, and visible to anyone reading the HTTP API directly:
`{name}:{execution_id}` for an execution's entry, else `{name}:global:{token_type}` or
`{name}:global`.
"""

from __future__ import annotations


def cache_key(name: str, execution_id: int | None = None, token_type: str | None = None) -> str:
    if execution_id is not None:
        return f"{name}:{execution_id}"
    if token_type:
        return f"{name}:global:{token_type}"
    return f"{name}:global"
