"""workerlib: how workers reach Keychain. HTTP only; never the database, never `app`.

One way in for each job:

    KeychainClient           talk to the cache: `async with KeychainClient() as keychain:`
                             (settings from the environment), on one event loop; the calls
                             below take it as keychain=
    fetch_secret             read a secret through the cache
    resolve_auth             turn a step's `auth:` map into headers, OAuth2 tokens included
    warm_execution           fetch what an execution's steps will need as it starts
    CredentialCache          the original worker interface, unchanged
    SecretProvider           what a provider of your own implements: `async def access(name)`
    VersionedSecretProvider  one that can also say which version an alias served
    SecretVersion            what such a provider answers: the value and the version's name
    errors                   what is raised: KeychainError and its tree, drawn at the top

What KeychainClient answers (Entry, EntryMeta, ...) is in workerlib.models; the providers
workerlib brings (Secret Manager, environment, files) are in workerlib.providers.
"""

from workerlib import errors
from workerlib.auth import resolve_auth
from workerlib.client import KeychainClient
from workerlib.compat import CredentialCache
from workerlib.providers import SecretProvider, SecretVersion, VersionedSecretProvider
from workerlib.secrets import fetch_secret
from workerlib.warm import warm_execution

__all__ = [
    "CredentialCache",
    "KeychainClient",
    "SecretProvider",
    "SecretVersion",
    "VersionedSecretProvider",
    "errors",
    "fetch_secret",
    "resolve_auth",
    "warm_execution",
]
