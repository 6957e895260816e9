"""The server's answers and the POST body, as msgspec structs.

Mirrors app/keychain/schemas.py by hand: workerlib never imports the server. Unknown fields in
answers are ignored, so a newer server can add fields without breaking older workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec


class _Hidden:
    def __repr__(self) -> str:
        return "<hidden>"


# Shown in a repr in place of a payload: a worker's log line or traceback must not carry it.
HIDDEN: Any = _Hidden()


def _fields_hiding(struct: msgspec.Struct, hidden: str) -> Iterator[tuple[str, Any]]:
    for name in struct.__struct_fields__:
        yield name, HIDDEN if name == hidden else getattr(struct, name)


def _repr_hiding(struct: msgspec.Struct, hidden: str) -> str:
    shown = ", ".join(f"{name}={value!r}" for name, value in _fields_hiding(struct, hidden))
    return f"{type(struct).__name__}({shown})"


class EntryPut(msgspec.Struct, kw_only=True, omit_defaults=True):
    token_data: dict[str, Any]
    credential_type: str
    cache_type: str = "secret"
    scope_type: str | None = None
    execution_id: int | None = None
    parent_execution_id: int | None = None
    credential_name: str | None = None
    ttl_seconds: int | str | None = None
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        return _repr_hiding(self, "token_data")

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(_fields_hiding(self, "token_data"))


class EntryMeta(msgspec.Struct, kw_only=True):
    """An entry without its payload: what POST and the list endpoint answer."""

    cache_key: str
    credential_name: str
    credential_type: str
    cache_type: str
    scope_type: str
    execution_id: int | None
    parent_execution_id: int | None
    ttl_seconds: int
    expires_at: datetime
    created_at: datetime
    accessed_at: datetime
    access_count: int
    key_id: str | None = None
    # The principal whose token wrote it (servers before least privilege do not say).
    written_by: str | None = None


class Entry(EntryMeta, kw_only=True):
    """A hit: the metadata after this read was counted, and the decrypted payload."""

    data: dict[str, Any]
    # Set by get_or_fill() on the one reader chosen to refresh a token that is about to run out:
    # write its successor with fill_lease=FillLease(cache_key=..., lease_id=refresh_lease).
    refresh_lease: str | None = None

    def __repr__(self) -> str:
        return _repr_hiding(self, "data")

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(_fields_hiding(self, "data"))


class FillLease(msgspec.Struct, kw_only=True):
    """A miss this caller must fill for everyone: fetch the value, then put() it with
    fill_lease=lease_id (or release_fill_lease() if the fetch fails). Others wait on the server."""

    cache_key: str
    lease_id: str


class EntryPage(msgspec.Struct, kw_only=True):
    items: list[EntryMeta]
    total: int
    limit: int
    offset: int


class Deleted(msgspec.Struct, kw_only=True):
    deleted: int


class ExecutionTokenRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    execution_id: int
    parent_execution_id: int | None = None
    read: list[str] = []
    write: list[str] = []
    ttl_seconds: int | None = None


class ExecutionToken(msgspec.Struct, kw_only=True):
    """A token bound to one execution; `token` is a credential, kept out of the repr."""

    token: str
    execution_id: int
    parent_execution_id: int | None
    read: list[str]
    write: list[str]
    expires_at: datetime

    def __repr__(self) -> str:
        return f"ExecutionToken(execution_id={self.execution_id}, expires_at={self.expires_at!r}, token=<hidden>)"
