"""Settings, read from the environment once, by load_settings(); nothing at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from app.errors import ConfigurationError

PREFIX = "KEYCHAIN_"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # None means "start the embedded PostgreSQL in data_dir" (local mode).
    database_url: str | None = None
    # When database_url is a transaction-pooling PgBouncer: PostgreSQL itself, for what needs a
    # session of its own (the LISTEN connection, and migrations' advisory lock).
    direct_database_url: str | None = None
    # database_url pools by transaction (PgBouncer's pool_mode = transaction): no prepared
    # statement may outlive the transaction that made it. Needs direct_database_url.
    database_transaction_pooler: bool = False
    data_dir: Path = Path(".keychain")
    host: str = "127.0.0.1"
    port: int = 8082
    # TLS: PEM files of the server's certificate (chain) and its unencrypted private key. Both
    # or neither; with both the server speaks https only, read once at start.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    db_schema: str = "noetl"
    db_pool_size: int = 10
    # How long a request waits for a pooled connection before it is answered 503 (overload).
    db_pool_timeout_seconds: float = 5.0
    # "k2:<base64>,k1:<base64>": the first id seals new writes, all of them open old rows.
    encryption_keys: str = ""
    # "name:role:token,...": empty means an open API (local development only).
    api_tokens: str = ""
    # With KEYCHAIN_DATABASE_URL set, an open API must be asked for (development only).
    allow_open_api: bool = False
    sweep_interval_seconds: float = 60.0
    sweep_batch_size: int = 1000
    default_ttl_seconds: int = 3600
    max_ttl_seconds: int = 30 * 24 * 3600
    max_body_bytes: int = 1024 * 1024
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # "name:read:pattern,name:write:pattern,...": limits configured tokens to credentials by
    # name (exact, or a prefix ending in '*'); a token named here reaches nothing else.
    api_token_limits: str = ""
    # "s1:<base64 of 32 bytes>,...": the first signs execution tokens, all of them verify.
    token_signing_keys: str = ""
    # The longest (and default) life of an execution token.
    execution_token_ttl_seconds: int = 24 * 3600
    # Every read is an audit event, counted in memory and emitted every audit_flush_seconds.
    audit_reads: bool = True
    audit_flush_seconds: float = 1.0
    # Shape caps for token_data, checked on the raw body before it is decoded; no real
    # credential comes near them.
    max_token_data_bytes: int = 64 * 1024
    max_token_data_depth: int = 32
    max_token_data_items: int = 10_000
    # Each process's memory tier of entries (0 entries: every read goes to the database).
    memory_tier_max_entries: int = 10_000
    memory_tier_max_bytes: int = 64 * 1024 * 1024
    # Hits served from memory are written back this often (and at shutdown).
    hit_flush_seconds: float = 1.0
    # While PostgreSQL is unreachable, keep serving entries already in memory until their TTL.
    serve_from_memory_during_outage: bool = True
    # Fill leases: a reader may ask the server to coordinate a miss (GET ...?fill_wait=S). The
    # first caller gets a lease this long and fetches; the others wait at most fill_max_wait
    # seconds, and at most fill_max_waiters of them per process (past it, none waits).
    fill_lease_seconds: float = 5.0
    fill_max_wait_seconds: float = 30.0
    fill_max_waiters: int = 1000
    # A token read with fill_wait in the last part of its cached life (this fraction, widened by
    # up to half again per entry so that tokens cached together do not refresh together) is
    # handed, once, to one reader to refresh while everyone keeps getting the current one.
    refresh_window_fraction: float = 0.1
    # At shutdown, how long requests already in flight may take to finish before the database
    # is closed under them.
    drain_seconds: float = 10.0
    # An INFO line per hit and miss: at thousands of hits a second, a cost some will not want
    # (reads stay audited either way).
    log_reads: bool = True
    # Secret Manager event notifications pushed by Pub/Sub (POST /api/events/secret-manager):
    # off (404) unless the audience is set, to the push subscription's
    # --push-auth-token-audience. Pushes carry a Google-signed OIDC token for that audience.
    pubsub_audience: str = ""
    # Where the keys that sign those tokens are published; tests serve their own.
    pubsub_jwks_url: str = "https://www.googleapis.com/oauth2/v3/certs"
    # The subscription's --push-auth-service-account. Anyone can have Google sign a token for
    # any audience, so without this any Google service account could push.
    pubsub_service_account: str = ""


# Environment variable suffix -> Settings field, where the two differ.
_RENAMED = {"schema": "db_schema"}


def _decode_path(type_: type, value: object) -> object:
    if type_ is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from KEYCHAIN_* variables; a bad value fails here, at start-up."""
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    fields = set(Settings.__struct_fields__)
    for name, value in environ.items():
        if not name.startswith(PREFIX):
            continue
        field = name[len(PREFIX) :].lower()
        field = _RENAMED.get(field, field)
        if field in fields and value != "":
            raw[field] = value.upper() if field == "log_level" else value
    raw.update(overrides)
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"invalid Keychain setting: {exc}") from exc
