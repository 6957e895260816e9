"""Request and response bodies, one struct per direction. Field names are the original API's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

CacheType = Literal["secret", "token", "config"]
ScopeType = Literal["execution", "global", "session"]
# What a write may say: upstream NoETL's worker client sends "local" (execution) and "shared"
# (execution with an execution id, else global); rows keep the canonical three.
ScopeTypeSent = Literal["execution", "global", "session", "local", "shared"]
ExecutionId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class EntryPut(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST body. Unknown fields are refused so a typo (say `ttl`) cannot silently fall back."""

    token_data: dict[str, Any]
    credential_type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    cache_type: CacheType = "secret"
    # None: "execution" when execution_id is given, else "global".
    scope_type: ScopeTypeSent | None = None
    execution_id: ExecutionId | None = None
    parent_execution_id: ExecutionId | None = None
    credential_name: Name | None = None
    # Playbooks render templates into strings, so "3300" is as good as 3300.
    ttl_seconds: int | str | None = None
    expires_at: AwareDatetime | None = None


class EntryMeta(msgspec.Struct, kw_only=True):
    """Everything about an entry except its payload."""

    cache_key: str
    credential_name: str
    credential_type: str
    cache_type: CacheType
    scope_type: ScopeType
    execution_id: int | None
    parent_execution_id: int | None
    key_id: str
    ttl_seconds: int
    expires_at: datetime
    created_at: datetime
    accessed_at: datetime
    access_count: int
    # The principal whose token wrote it ("unknown" for entries written before this was kept).
    written_by: str


class EntryWritten(EntryMeta, kw_only=True):
    """POST's answer: the entry's metadata, and whether the write created it."""

    created: bool


class Entry(EntryMeta, kw_only=True, omit_defaults=True):
    data: dict[str, Any]
    # Set on a coordinated read (fill_wait) of a token in the last part of its life, for the one
    # reader chosen to refresh it: fetch a new token and write it with this fill lease.
    refresh_lease: str | None = None


class EntryQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which entries' metadata to list, and which page of them."""

    execution_id: int | None = None  # matches sub-executions (parent_execution_id) too
    scope_type: ScopeType | None = None
    credential_name: str | None = None
    include_expired: bool = False
    limit: int = 100
    offset: int = 0


class EntryPage(msgspec.Struct, kw_only=True):
    items: list[EntryMeta]
    total: int
    limit: int
    offset: int


class Deleted(msgspec.Struct, kw_only=True):
    deleted: int


GrantPattern = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class ExecutionTokenRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What an execution token may reach besides its execution's own entries."""

    execution_id: ExecutionId
    # A sub-execution's token dies with its top-level execution too.
    parent_execution_id: ExecutionId | None = None
    # Global entries by credential name (exact, or a prefix ending in '*'); write implies read.
    read: Annotated[list[GrantPattern], msgspec.Meta(max_length=100)] = []
    write: Annotated[list[GrantPattern], msgspec.Meta(max_length=100)] = []
    # At most, and by default, KEYCHAIN_EXECUTION_TOKEN_TTL_SECONDS.
    ttl_seconds: Annotated[int, msgspec.Meta(gt=0)] | None = None


class ExecutionToken(msgspec.Struct, kw_only=True):
    token: str
    execution_id: int
    parent_execution_id: int | None
    read: list[str]
    write: list[str]
    expires_at: datetime

    def __repr__(self) -> str:  # the token is a credential: keep it out of logs and tracebacks
        return f"ExecutionToken(execution_id={self.execution_id}, expires_at={self.expires_at!r}, token=<hidden>)"
