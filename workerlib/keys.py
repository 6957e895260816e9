"""The one cache-key format, shared by fetch_secret, OAuth2 tokens and CredentialCache.

It is the original worker's format, and visible to anyone reading the HTTP API directly:
`{name}:{execution_id}` for an execution's entry, else `{name}:global:{token_type}` or
`{name}:global`. Names may hold ':' (and Secret Manager paths hold '/'), so two calls could
spell one key: `cache_key("a:global", 7) == cache_key("a", token_type="7")`. The parts that
would make that possible are refused instead, which leaves every other key as it always was.
"""

from __future__ import annotations

import re

from workerlib.errors import InvalidKey

_EXECUTION_ID = re.compile(r"-?[0-9]+")


def cache_key(
    name: str, execution_id: int | str | None = None, token_type: str | None = None
) -> str:
    if "global" in name.split(":"):
        raise InvalidKey(
            f"credential name {name!r} has a 'global' segment, which would make its key ambiguous"
        )
    if token_type and ":" in token_type:
        raise InvalidKey(
            f"token type {token_type!r} contains ':', which would make its key ambiguous"
        )
    if execution_id is not None:
        # Templates render ids as strings; anything but a whole number could spell a global key.
        if isinstance(execution_id, bool) or not _EXECUTION_ID.fullmatch(str(execution_id)):
            raise InvalidKey(f"execution id {execution_id!r} is not a whole number")
        return f"{name}:{execution_id}"
    if token_type:
        return f"{name}:global:{token_type}"
    return f"{name}:global"


def oauth2_token_key(name: str, client_digest: str) -> str:
    """`{name}:global:oauth2:{client_digest}`: no cache_key() call can build it, as a token
    type may not contain ':'."""
    return f"{cache_key(name, token_type='oauth2')}:{client_digest}"
