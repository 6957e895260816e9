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
    data_dir: Path = Path(".keychain")
    host: str = "127.0.0.1"
    port: int = 8082
    # TLS: PEM files of the server's certificate (chain) and its unencrypted private key. Both
    # or neither; with both the server speaks https only, read once at start.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    db_schema: str = "noetl"
    db_pool_size: int = 10
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
