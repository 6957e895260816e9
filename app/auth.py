"""Bearer tokens and roles: `worker` reads and writes single entries, `admin` may do everything.

KEYCHAIN_API_TOKENS="ci-worker:worker:<token>,ops:admin:sha256:<hex>". Plain tokens are hashed
as soon as they are parsed, so only SHA-256 digests stay in memory, and presented tokens are
compared digest to digest in constant time, against every entry.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from typing import Literal

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from app.errors import ConfigurationError

log = logging.getLogger(__name__)

Role = Literal["worker", "admin"]
ROLES: tuple[Role, ...] = ("worker", "admin")
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="keychain"'}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        return self.role == "admin" or self.role == needed


# Used when no tokens are configured: local development only, announced loudly at start-up.
OPEN_ACCESS = Principal(name="anonymous", role="admin")


@dataclass(frozen=True)
class _TokenEntry:
    principal: Principal
    digest: bytes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    def __init__(self, entries: list[_TokenEntry]) -> None:
        self._entries = entries

    @property
    def is_open(self) -> bool:
        return not self._entries

    @classmethod
    def parse(cls, spec: str) -> TokenTable:
        entries = []
        for position, item in enumerate(filter(None, (p.strip() for p in spec.split(","))), 1):
            name, _, rest = item.partition(":")
            role, _, token = rest.partition(":")
            where = f"KEYCHAIN_API_TOKENS entry {position}"
            if not _NAME.match(name):
                raise ConfigurationError(f"{where}: name must be 1-64 letters, digits, '_.@-'")
            if role not in ROLES:
                raise ConfigurationError(f"{where} ({name}): role must be one of {', '.join(ROLES)}")
            if token.startswith("sha256:"):
                hex_digest = token.removeprefix("sha256:")
                if not _HEX_DIGEST.match(hex_digest):
                    raise ConfigurationError(f"{where} ({name}): sha256 digest must be 64 hex digits")
                digest = bytes.fromhex(hex_digest)
            elif len(token) >= 16:
                digest = _digest(token)
            else:
                raise ConfigurationError(f"{where} ({name}): token must be at least 16 characters")
            entries.append(_TokenEntry(Principal(name, role), digest))  # type: ignore[arg-type]
        return cls(entries)

    def authenticate(self, authorization: str | None) -> Principal | None:
        if self.is_open:
            return OPEN_ACCESS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = _digest(token.strip())
        found = None
        for entry in self._entries:  # no early exit: every entry costs the same
            if hmac.compare_digest(presented, entry.digest):
                found = entry.principal
        return found


def require_role(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard for every /api route; the handler's opt["role"] names the role it needs."""
    tokens: TokenTable = connection.app.state.runtime.tokens
    principal = tokens.authenticate(connection.headers.get("authorization"))
    if principal is None:
        raise NotAuthorizedException(
            detail="missing or unknown bearer token; send 'Authorization: Bearer <token>'",
            headers=WWW_AUTHENTICATE,
        )
    connection.state.principal = principal
    needed: Role = handler.opt.get("role", "worker")
    if not principal.may(needed):
        raise PermissionDeniedException(
            detail=f"token '{principal.name}' has role '{principal.role}'; this call needs '{needed}'"
        )
