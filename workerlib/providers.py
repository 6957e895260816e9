"""Where secrets come from on a cache miss: Google Secret Manager, or env/files for local work.

A provider is anything with `async def access(name) -> str`. Names are Secret Manager version
paths (`projects/123/secrets/openai-api-key/versions/1`); the env and file providers use the
secret id part (`openai-api-key`) so the same playbook runs locally. A provider that can say
which version an alias (`versions/latest`) served also has `access_version(name)`; for one
that has only `access`, every name serves itself. Which of them serves a
process is the operator's choice (KEYCHAIN_SECRET_PROVIDER, KEYCHAIN_SECRETS_DIR), never a
playbook's, and each reads only what is set aside for secrets: variables named
KEYCHAIN_SECRET_*, files inside the one directory.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from workerlib._loop import LoopBinding
from workerlib.errors import SecretError, SecretNotFound

EMULATOR_HOST_ENV = "SECRET_MANAGER_EMULATOR_HOST"
PROVIDER_ENV = "KEYCHAIN_SECRET_PROVIDER"
SECRETS_DIR_ENV = "KEYCHAIN_SECRETS_DIR"

NO_CREDENTIALS = (
    "no Google credentials for Secret Manager: run with Application Default Credentials "
    "(GOOGLE_APPLICATION_CREDENTIALS naming a key file, `gcloud auth application-default login`, or "
    f"the workload's service account), or set {EMULATOR_HOST_ENV}=host:port to use an emulator"
)
_VERSION_PATH = re.compile(r"^projects/[^/]+/secrets/(?P<id>[^/]+)(?:/versions/[^/]+)?$")
_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


@runtime_checkable
class SecretProvider(Protocol):
    async def access(self, name: str) -> str:
        """The secret's value; SecretNotFound when there is no such secret."""
        ...


@dataclass(frozen=True)
class SecretVersion:
    """A secret's value and the version that served it, named as the provider names it
    (`.../versions/7` when `.../versions/latest` was asked for)."""

    name: str
    value: str = field(repr=False)  # never in a log line or a traceback


@runtime_checkable
class VersionedSecretProvider(SecretProvider, Protocol):
    async def access_version(self, name: str) -> SecretVersion:
        """The value and the concrete version behind `name`; errors as access()."""
        ...


async def access_version(provider: SecretProvider, name: str) -> SecretVersion:
    """What `provider` serves for `name`, and which version that is. A provider with only
    `access` (env, files, most third-party ones) cannot tell: the version is the name asked for."""
    if isinstance(provider, VersionedSecretProvider):
        return await provider.access_version(name)
    return SecretVersion(name, await provider.access(name))


def secret_id(name: str) -> str:
    """`projects/1/secrets/openai-api-key/versions/1` -> `openai-api-key`; a bare id is kept."""
    match = _VERSION_PATH.match(name)
    return match["id"] if match else name


class GoogleSecretManagerProvider:
    """The real google-cloud-secret-manager async client.

    With SECRET_MANAGER_EMULATOR_HOST=host:port (or `emulator_host=`) it talks to that address
    over an insecure channel with anonymous credentials, as PUBSUB_EMULATOR_HOST does; otherwise
    it uses Application Default Credentials. Its channel is made on the first access and
    belongs to that event loop: use it as `async with GoogleSecretManagerProvider() as provider:`
    (or call close()) on one loop; another loop's access raises WrongEventLoop.
    """

    def __init__(
        self,
        *,
        emulator_host: str | None = None,
        timeout: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.emulator_host = emulator_host or environ.get(EMULATOR_HOST_ENV) or None
        self.timeout = timeout
        # Made on the first access, so that a worker whose reads all hit never opens one.
        self._client: Any = None
        self._binding = LoopBinding(
            "this GoogleSecretManagerProvider's channel was made on another event loop and "
            "belongs to it: make a provider per loop, inside `async with`"
        )

    async def __aenter__(self) -> GoogleSecretManagerProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _running_loops_client(self) -> Any:
        self._binding.check()
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        from google.cloud import secretmanager_v1

        if self.emulator_host:
            import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
            from google.auth.credentials import AnonymousCredentials
            from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
                SecretManagerServiceGrpcAsyncIOTransport,
            )

            transport = SecretManagerServiceGrpcAsyncIOTransport(
                channel=grpc.aio.insecure_channel(self.emulator_host),
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]  # google-auth has no annotations here
            )
            return secretmanager_v1.SecretManagerServiceAsyncClient(transport=transport)
        return secretmanager_v1.SecretManagerServiceAsyncClient()

    async def access(self, name: str) -> str:
        """The secret's value; raises as access_version()."""
        return (await self.access_version(name)).value

    async def access_version(self, name: str) -> SecretVersion:
        """The value and the version that served it. Raises SecretNotFound, SecretError (no
        credentials, permission denied, any other Secret Manager failure), WrongEventLoop."""
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import DefaultCredentialsError

        try:
            client = self._running_loops_client()
            response = await client.access_secret_version(name=name, timeout=self.timeout)
        except DefaultCredentialsError as exc:
            raise SecretError(name, NO_CREDENTIALS) from exc
        except gexc.NotFound as exc:
            raise SecretNotFound(name, f"secret {name!r} not found in Secret Manager") from exc
        except gexc.PermissionDenied as exc:
            raise SecretError(
                name, f"permission denied reading secret {name!r} from Secret Manager"
            ) from exc
        except gexc.GoogleAPIError as exc:
            code = getattr(exc, "code", None)
            raise SecretError(
                name,
                f"Secret Manager failed reading secret {name!r} ({type(exc).__name__}, code {code})",
            ) from exc
        try:
            value = response.payload.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SecretError(name, f"secret {name!r} is not UTF-8 text") from exc
        # The response names the version it served: `latest` (or another alias) resolved. An
        # emulator that leaves the name empty served the name asked for.
        return SecretVersion(response.name or name, value)

    async def close(self) -> None:
        """Close the channel, if one was made, on the loop it belongs to; the next access makes
        a new one. Raises nothing of its own."""
        client, self._client = self._client, None
        self._binding.release()
        if client is not None:
            await client.transport.close()


class EnvProvider:
    """Secrets from environment variables: `openai-api-key` -> `KEYCHAIN_SECRET_OPENAI_API_KEY`.

    The prefix is fixed so that no secret name reaches the worker's own settings
    (KEYCHAIN_API_TOKEN) or anything else in its environment.
    """

    PREFIX = "KEYCHAIN_SECRET_"

    def __init__(self, *, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    def variable(self, name: str) -> str:
        """The variable that holds secret `name`."""
        return self.PREFIX + re.sub(r"[^A-Za-z0-9]", "_", secret_id(name)).upper()

    async def access(self, name: str) -> str:
        """The variable's value; raises SecretNotFound when it is not set."""
        environ = os.environ if self._environ is None else self._environ
        variable = self.variable(name)
        value = environ.get(variable)
        if value is None:
            raise SecretNotFound(
                name, f"secret {name!r} not found: environment variable {variable} is not set"
            )
        return value


class FileProvider:
    """Secrets from files in one directory (one file per secret id, as Kubernetes mounts them).

    A file may be a symlink (Kubernetes links each one through `..data`), but only to a file
    inside the directory: one pointing elsewhere (the service-account token, say) is refused.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        """The file that holds secret `name`; raises SecretNotFound for a name that is not a
        valid secret id."""
        sid = secret_id(name)
        if not _SECRET_ID.match(sid):
            # Secret ids are letters, digits, '-' and '_'; anything else could escape the directory.
            raise SecretNotFound(name, f"secret {name!r} has no valid secret id for a file name")
        return self.directory / sid

    def _read(self, name: str) -> str:
        path = self.path(name)
        # Every symlink followed, then checked; reading the resolved path rather than the link
        # means a link re-pointed after the check is not followed.
        resolved = path.resolve(strict=True)
        if not resolved.is_relative_to(self.directory.resolve(strict=True)):
            raise SecretError(
                name, f"secret {name!r}: {path} links outside {self.directory}; refused"
            )
        return resolved.read_text(encoding="utf-8")

    async def access(self, name: str) -> str:
        """The file's text, less a trailing newline. Raises SecretNotFound (no such file),
        SecretError (a link out of the directory, or a file that cannot be read as UTF-8)."""
        try:
            text = await asyncio.to_thread(self._read, name)
        except FileNotFoundError as exc:
            raise SecretNotFound(
                name, f"secret {name!r} not found: no file {self.path(name)}"
            ) from exc
        except (OSError, UnicodeDecodeError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise SecretError(
                name, f"cannot read secret {name!r} from {self.path(name)} ({type(exc).__name__})"
            ) from exc
        # Files written by `echo` end in a newline that is not part of the secret.
        return text.rstrip("\r\n")


def provider_from_env() -> SecretProvider:
    """The provider KEYCHAIN_SECRET_PROVIDER names: `secret_manager` (default), `env`, or `file`
    (KEYCHAIN_SECRETS_DIR). Raises SecretError for a value it does not know or a missing
    directory."""
    kind = (os.environ.get(PROVIDER_ENV) or "secret_manager").strip().lower()
    if kind in ("secret_manager", "google", "gcp"):
        return GoogleSecretManagerProvider()
    if kind == "env":
        return EnvProvider()
    if kind == "file":
        directory = os.environ.get(SECRETS_DIR_ENV)
        if not directory:
            raise SecretError("", f"{PROVIDER_ENV}=file needs {SECRETS_DIR_ENV}")
        return FileProvider(directory)
    raise SecretError("", f"unknown {PROVIDER_ENV} {kind!r}; use secret_manager, env or file")


class ConfiguredProvider:
    """The provider the operator configured (provider_from_env), made at the first miss that
    needs one and kept until close(): a KeychainClient holds one, so that its misses share one
    Secret Manager channel, on the client's event loop, and closing the client closes it."""

    def __init__(self) -> None:
        self._provider: SecretProvider | None = None
        self._closed = False

    def get(self) -> SecretProvider:
        """The provider, made now if not yet. Raises SecretError for a configuration that
        names no provider it knows, RuntimeError once closed (a channel opened then would
        never be closed)."""
        if self._closed:
            raise RuntimeError("the KeychainClient is closed: its secret provider with it")
        if self._provider is None:
            self._provider = provider_from_env()
        return self._provider

    async def close(self) -> None:
        self._closed = True
        provider, self._provider = self._provider, None
        if isinstance(provider, GoogleSecretManagerProvider):
            await provider.close()
