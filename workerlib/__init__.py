"""workerlib: how workers reach Keychain. HTTP only; never the database, never `app`."""

from workerlib.auth import resolve_auth
from workerlib.client import KeychainClient
from workerlib.compat import CredentialCache
from workerlib.errors import (
    AuthConfigError,
    BadRequest,
    Forbidden,
    InvalidKey,
    KeychainAPIError,
    KeychainConfigError,
    KeychainError,
    KeychainUnavailable,
    NotFound,
    RateLimited,
    SecretError,
    SecretNotFound,
    TokenEndpointError,
    TokenRefused,
    Unauthorized,
    UnreadableEntry,
)
from workerlib.models import Entry, EntryMeta, EntryPage, ExecutionToken, FillLease
from workerlib.oauth import client_credentials_token
from workerlib.providers import (
    EnvProvider,
    FileProvider,
    GoogleSecretManagerProvider,
    SecretProvider,
    SecretVersion,
    VersionedSecretProvider,
)
from workerlib.secrets import fetch_secret
from workerlib.warm import warm_execution

__all__ = [
    "AuthConfigError",
    "BadRequest",
    "CredentialCache",
    "Entry",
    "EntryMeta",
    "EntryPage",
    "EnvProvider",
    "ExecutionToken",
    "FileProvider",
    "FillLease",
    "Forbidden",
    "GoogleSecretManagerProvider",
    "InvalidKey",
    "KeychainAPIError",
    "KeychainClient",
    "KeychainConfigError",
    "KeychainError",
    "KeychainUnavailable",
    "NotFound",
    "RateLimited",
    "SecretError",
    "SecretNotFound",
    "SecretProvider",
    "SecretVersion",
    "TokenEndpointError",
    "TokenRefused",
    "Unauthorized",
    "UnreadableEntry",
    "VersionedSecretProvider",
    "client_credentials_token",
    "fetch_secret",
    "resolve_auth",
    "warm_execution",
]
