"""Who is calling, and what they may touch.

Two kinds of bearer token:
- Configured tokens, KEYCHAIN_API_TOKENS="ci-worker:worker:<token>,engine:issuer:<token>,
  ops:admin:sha256:<hex>". Plain tokens are hashed as soon as they are parsed, so only SHA-256
  digests stay in memory, and presented tokens are compared digest to digest in constant time,
  against every entry. KEYCHAIN_API_TOKEN_LIMITS="ci-worker:read:ci-*,ci-worker:write:ci-cache"
  limits a configured token to credentials by name.
- Execution tokens: short-lived JWTs the server signs (KEYCHAIN_TOKEN_SIGNING_KEYS) for one
  execution, minted by an `issuer` (the workflow engine) or `keychain mint-token`. They reach
  that execution's and its sub-executions' entries, and global entries only as listed.

Roles: `worker` reads and writes single entries, `issuer` mints execution tokens and cleans up
executions, `admin` may do everything. What a principal may do to a given entry is decided by
app/keychain/access.py.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import jwt
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.crypto import load_or_create_local_keys, parse_keys
from app.errors import ConfigurationError
from app.openapi import send_error

log = logging.getLogger(__name__)

Role = Literal["worker", "issuer", "admin"]
ROLES: tuple[Role, ...] = ("worker", "issuer", "admin")
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
NAME_RULE = "1-64 letters, digits, '_.@-'"
# Tokens someone copied from an example and never replaced.
_PLACEHOLDER = re.compile(r"change[-_ ]?me|replace[-_ ]?me|placeholder|example|<.*>", re.IGNORECASE)
MIN_DISTINCT_TOKEN_CHARACTERS = 8
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="keychain"'}
SIGNING_KEYS_SETTING = "KEYCHAIN_TOKEN_SIGNING_KEYS"
LOCAL_SIGNING_KEY_FILE = "token-signing.key"
TOKEN_ISSUER = "keychain"
TOKEN_AUDIENCE = "keychain"
_JWT_ALGORITHM = "HS256"
MAX_VERIFIED_TOKENS = 10_000


@dataclass(frozen=True)
class Grants:
    """Credential names a principal may read and write: exact names, or prefixes ending in '*'.

    A write grant implies a read grant.
    """

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    def may_read(self, credential_name: str) -> bool:
        return _matches(self.read, credential_name) or self.may_write(credential_name)

    def may_write(self, credential_name: str) -> bool:
        return _matches(self.write, credential_name)


def _matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def check_patterns(patterns: list[str], where: str) -> tuple[str, ...]:
    for pattern in patterns:
        if not pattern or pattern == "*":
            raise ConfigurationError(
                f"{where}: a grant must name credentials; '*' alone would grant all of them"
            )
        if "*" in pattern[:-1]:
            raise ConfigurationError(
                f"{where}: '*' may only end a grant (a prefix), as in 'projects/1/secrets/ci-*'"
            )
    return tuple(patterns)


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    # None: a configured token without limits. Execution tokens always carry grants.
    grants: Grants | None = None
    # Set for execution tokens: the execution they are bound to, and its parent (ending either
    # ends the token).
    execution_id: int | None = None
    parent_execution_id: int | None = None

    def may(self, roles: tuple[Role, ...]) -> bool:
        return self.role == "admin" or self.role in roles


# Used when no tokens are configured: local development only, announced loudly at start-up.
OPEN_ACCESS = Principal(name="anonymous", role="admin")


@dataclass(frozen=True)
class _TokenEntry:
    principal: Principal
    digest: bytes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _check_token(token: str, where: str) -> bytes:
    if token.startswith("sha256:"):
        hex_digest = token.removeprefix("sha256:")
        if not _HEX_DIGEST.match(hex_digest):
            raise ConfigurationError(f"{where}: sha256 digest must be 64 hex digits")
        return bytes.fromhex(hex_digest)
    if len(token) < 16:
        raise ConfigurationError(f"{where}: token must be at least 16 characters")
    if _PLACEHOLDER.search(token) or len(set(token)) < MIN_DISTINCT_TOKEN_CHARACTERS:
        raise ConfigurationError(
            f"{where}: token looks like a placeholder; generate one with: "
            "keychain tokens new NAME ROLE"
        )
    return _digest(token)


def is_token_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def new_api_token() -> str:
    """A random token that _check_token accepts."""
    while True:
        token = secrets.token_urlsafe(32)
        # About one in a billion spells a placeholder word ("example"...): draw again.
        if not _PLACEHOLDER.search(token):
            return token


def digest_form(token: str) -> str:
    """The `sha256:<hex>` form of a token, for KEYCHAIN_API_TOKENS: the server never holds the token."""
    return "sha256:" + _digest(token).hex()


def _parse_limits(spec: str, names: set[str]) -> dict[str, Grants]:
    """KEYCHAIN_API_TOKEN_LIMITS="name:read:pattern,name:write:pattern,..." per token name."""
    read: dict[str, list[str]] = {}
    write: dict[str, list[str]] = {}
    for position, item in enumerate(filter(None, (p.strip() for p in spec.split(","))), 1):
        name, _, rest = item.partition(":")
        mode, _, pattern = rest.partition(":")
        where = f"KEYCHAIN_API_TOKEN_LIMITS entry {position}"
        if name not in names:
            raise ConfigurationError(f"{where}: no token named {name!r} in KEYCHAIN_API_TOKENS")
        if mode not in ("read", "write"):
            raise ConfigurationError(f"{where} ({name}): mode must be 'read' or 'write'")
        (read if mode == "read" else write).setdefault(name, []).append(pattern)
    return {
        name: Grants(
            read=check_patterns(read.get(name, []), f"KEYCHAIN_API_TOKEN_LIMITS ({name})"),
            write=check_patterns(write.get(name, []), f"KEYCHAIN_API_TOKEN_LIMITS ({name})"),
        )
        for name in read.keys() | write.keys()
    }


class TokenTable:
    def __init__(self, entries: list[_TokenEntry]) -> None:
        self._entries = entries

    @property
    def is_open(self) -> bool:
        return not self._entries

    def has_role(self, role: Role) -> bool:
        return any(entry.principal.role == role for entry in self._entries)

    @classmethod
    def parse(cls, spec: str, limits: str = "") -> TokenTable:
        parsed: list[tuple[str, Role, bytes]] = []
        for position, item in enumerate(filter(None, (p.strip() for p in spec.split(","))), 1):
            name, _, rest = item.partition(":")
            role, _, token = rest.partition(":")
            where = f"KEYCHAIN_API_TOKENS entry {position}"
            if not is_token_name(name):
                raise ConfigurationError(f"{where}: name must be {NAME_RULE}")
            if role not in ROLES:
                raise ConfigurationError(
                    f"{where} ({name}): role must be one of {', '.join(ROLES)}"
                )
            parsed.append((name, role, _check_token(token, f"{where} ({name})")))
        grants = _parse_limits(limits, {name for name, _, _ in parsed})
        return cls(
            [
                _TokenEntry(Principal(name, role, grants.get(name)), digest)
                for name, role, digest in parsed
            ]
        )

    def authenticate(self, token: str) -> Principal | None:
        presented = _digest(token)
        found = None
        for entry in self._entries:  # no early exit: every entry costs the same
            if hmac.compare_digest(presented, entry.digest):
                found = entry.principal
        return found


@dataclass(frozen=True)
class MintedToken:
    token: str
    expires_at: datetime


class ExecutionTokens:
    """Signs and verifies execution tokens (HS256 JWTs); the first key signs, all verify."""

    def __init__(self, keys: list[tuple[str, bytes]], max_ttl_seconds: int) -> None:
        self._keys = dict(keys)
        self._signing_key_id = keys[0][0]
        self.max_ttl_seconds = max_ttl_seconds
        # Tokens already verified, by digest, until they expire: a worker sends the same token
        # on every call, and checking a signature costs more than the rest of a hit.
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    @classmethod
    def configured(
        cls, spec: str, data_dir: Path | None, max_ttl_seconds: int
    ) -> ExecutionTokens | None:
        """From KEYCHAIN_TOKEN_SIGNING_KEYS; in local mode (data_dir given) a generated key."""
        if spec:
            return cls(parse_keys(spec, SIGNING_KEYS_SETTING), max_ttl_seconds)
        if data_dir is not None:
            keys = load_or_create_local_keys(
                data_dir / LOCAL_SIGNING_KEY_FILE, "local", SIGNING_KEYS_SETTING, "token signing"
            )
            return cls(keys, max_ttl_seconds)
        return None

    def mint(
        self,
        issuer: str,
        execution_id: int,
        parent_execution_id: int | None,
        grants: Grants,
        ttl_seconds: int,
    ) -> MintedToken:
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = now + timedelta(seconds=ttl_seconds)
        claims = {
            "iss": TOKEN_ISSUER,
            "aud": TOKEN_AUDIENCE,
            "sub": issuer,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": expires_at,
            "exe": execution_id,
            "pex": parent_execution_id,
            "rd": list(grants.read),
            "wr": list(grants.write),
        }
        token = jwt.encode(
            claims,
            self._keys[self._signing_key_id],
            algorithm=_JWT_ALGORITHM,
            headers={"kid": self._signing_key_id},
        )
        return MintedToken(token, expires_at)

    def verify(self, token: str) -> Principal:
        """The token's principal; raises NotAuthorizedException saying what is wrong."""
        digest = _digest(token)
        known = self._verified.get(digest)
        if known is not None and known[1] > time.time():
            return known[0]
        principal, expires = self._verify_signature(token)
        self._verified[digest] = (principal, expires)
        if len(self._verified) > MAX_VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def _verify_signature(self, token: str) -> tuple[Principal, float]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise _unauthorized("execution token is signed by a key this server does not have")
            claims = jwt.decode(
                token,
                key,
                algorithms=[_JWT_ALGORITHM],
                audience=TOKEN_AUDIENCE,
                issuer=TOKEN_ISSUER,
                options={"require": ["exp", "iat", "sub", "exe"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized(
                "execution token has expired; ask the engine for a new one"
            ) from None
        except jwt.PyJWTError:
            raise _unauthorized(
                "execution token is malformed or its signature does not verify"
            ) from None
        execution_id, parent = claims["exe"], claims.get("pex")
        if not isinstance(execution_id, int) or not (parent is None or isinstance(parent, int)):
            raise _unauthorized("execution token names no valid execution")
        principal = Principal(
            name=f"execution:{execution_id}",
            role="worker",
            grants=Grants(read=tuple(claims.get("rd") or ()), write=tuple(claims.get("wr") or ())),
            execution_id=execution_id,
            parent_execution_id=parent,
        )
        return principal, float(claims["exp"])


def _unauthorized(detail: str) -> NotAuthorizedException:
    return NotAuthorizedException(detail=detail, headers=WWW_AUTHENTICATE)


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class RequireRole(ASGIMiddleware):
    """Every /api route: authenticate the bearer token, then check the handler's opt["roles"].

    A middleware rather than a guard: Litestar copies the route handler for each guard call,
    about a sixth of a cache hit. A refusal is answered here, not raised: an exception from a
    middleware is answered outside the app's own middleware, which would then miss the request
    id, the status for metrics and the audit event."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        try:
            _authorize(scope)
        except (NotAuthorizedException, PermissionDeniedException) as refusal:
            await send_error(
                scope, receive, send, refusal.status_code, refusal.detail, refusal.headers
            )
            return
        await next_app(scope, receive, send)


def bearer_token(authorization: str) -> str:
    """The token of an `Authorization: Bearer <token>` header; "" for any other header."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _authorize(scope: Scope) -> None:
    runtime = scope["litestar_app"].state.runtime
    tokens: TokenTable = runtime.tokens
    # Off the raw scope: building Litestar's Headers for one header cost more than the lookup.
    sent = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
    token = bearer_token(sent.decode("latin-1"))
    if token and _looks_like_jwt(token):
        signer = runtime.process.execution_tokens
        if signer is None:
            raise _unauthorized(
                f"execution tokens are not enabled on this server ({SIGNING_KEYS_SETTING})"
            )
        principal: Principal | None = signer.verify(token)
    elif tokens.is_open:
        principal = OPEN_ACCESS
    elif token:
        principal = tokens.authenticate(token)
    else:
        principal = None
    if principal is None:
        raise _unauthorized("missing or unknown bearer token; send 'Authorization: Bearer <token>'")
    scope["state"]["principal"] = principal  # read back by caller_of()
    roles: tuple[Role, ...] = scope["route_handler"].opt.get("roles", ("worker",))
    if not principal.may(roles):
        raise PermissionDeniedException(
            detail=f"token '{principal.name}' has role '{principal.role}'; this call needs "
            f"{' or '.join(repr(r) for r in (*roles, 'admin'))}"
        )
