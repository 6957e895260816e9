"""The auth-cache path, and the cache key as the caller sent it in that path."""

from __future__ import annotations

from urllib.parse import unquote

from litestar.types import Scope

from app.errors import InvalidEntry

AUTH_CACHE_PATH = "/api/auth-cache"
FILL_LEASE_PATH = "/api/fill-leases"


def cache_key_sent(scope: Scope, under: str = AUTH_CACHE_PATH) -> str:
    """The cache key exactly as the caller sent it.

    Routing normalises the path (drops a trailing '/', folds '//'), which would silently file
    the entry under another key; the raw path keeps what was sent, for the service to judge.
    Escapes that do not decode as UTF-8 are refused rather than replaced, so two different
    keys can never land on one entry.
    """
    raw_path = scope.get("raw_path")
    prefix = f"{under}/"
    try:
        if raw_path:
            sent = unquote(raw_path.decode("utf-8"), errors="strict")
            if sent.startswith(prefix):
                return sent[len(prefix) :]
    except UnicodeDecodeError as exc:
        raise InvalidEntry("cache key is not valid UTF-8 once its %-escapes are decoded") from exc
    # No raw path from the server: the :path parameter, which keeps its leading slash.
    routed = scope["path_params"]["cache_key"]
    return routed[1:] if routed.startswith("/") else routed
