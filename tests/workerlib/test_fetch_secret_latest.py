"""fetch_secret of `.../versions/latest`: one version per execution, a fresh one per execution,
and a global entry that follows Secret Manager's events. The real Secret Manager client against
the emulator, the real Keychain app, events pushed signed as Pub/Sub pushes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar import Litestar

from app.settings import Settings
from tests.conftest import BASE_URL, asgi_client
from tests.pubsub import PATH, pubsub_settings, push_body, signed
from tests.secret_manager_emulator import SecretManagerEmulator
from tests.server.replicas import replica
from tests.workerlib.helpers import MISS, ScriptedServer, assert_logged_degraded, entry_body
from workerlib import KeychainClient, SecretVersion, fetch_secret
from workerlib.errors import SecretError
from workerlib.providers import EnvProvider, FileProvider, GoogleSecretManagerProvider

SECRET = "projects/123/secrets/openai-api-key"
LATEST = f"{SECRET}/versions/latest"
V1, V2 = f"{SECRET}/versions/1", f"{SECRET}/versions/2"


@pytest_asyncio.fixture(loop_scope="session")
async def keychain_http(
    make_app: Callable[..., Litestar], jwks_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, on the test's transaction, with Secret Manager events turned on."""
    async with asgi_client(make_app(**pubsub_settings(jwks_url))) as http:
        yield http


@pytest.fixture
def keychain(keychain_http: httpx.AsyncClient) -> KeychainClient:
    return KeychainClient(BASE_URL, http_client=keychain_http)


async def push(
    http: httpx.AsyncClient, signing_key: rsa.RSAPrivateKey, event_type: str, name: str
) -> int:
    """Push an event as Pub/Sub would; how many entries it dropped."""
    answer = await http.post(PATH, json=push_body(event_type, name), headers=signed(signing_key))
    assert answer.status_code == 200, answer.text
    return answer.json()["dropped"]


async def credential_names(keychain: KeychainClient, **filters: object) -> dict[str, str]:
    """cache key -> credential name of the entries listed with `filters`."""
    page = await keychain.list_entries(**filters)  # type: ignore[arg-type]
    return {item.cache_key: item.credential_name for item in page.items}


async def test_an_execution_keeps_the_version_it_first_read_and_the_next_one_reads_afresh(
    keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    secret_manager.add(V1, "value-one")
    assert (
        await fetch_secret(LATEST, execution_id=42, keychain=keychain, provider=provider)
        == "value-one"
    )

    secret_manager.add(V2, "value-two")  # mid-run
    assert (
        await fetch_secret(LATEST, execution_id=42, keychain=keychain, provider=provider)
        == "value-one"
    )
    # A step asking for the version by number gets the same value, from the cache.
    assert (
        await fetch_secret(V1, execution_id=42, keychain=keychain, provider=provider) == "value-one"
    )
    assert (
        await fetch_secret(LATEST, execution_id=43, keychain=keychain, provider=provider)
        == "value-two"
    )
    assert dict(secret_manager.calls) == {LATEST: 2}

    # Cached under the alias and under the version, both named by the version served.
    assert await credential_names(keychain, execution_id=42) == {f"{LATEST}:42": V1, f"{V1}:42": V1}
    assert await credential_names(keychain, execution_id=43) == {f"{LATEST}:43": V2, f"{V2}:43": V2}


async def test_a_pushed_version_add_moves_the_global_latest_but_not_a_running_execution(
    keychain: KeychainClient,
    keychain_http: httpx.AsyncClient,
    signing_key: rsa.RSAPrivateKey,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    secret_manager.add(V1, "value-one")
    assert await fetch_secret(LATEST, keychain=keychain, provider=provider) == "value-one"
    assert (
        await fetch_secret(LATEST, execution_id=42, keychain=keychain, provider=provider)
        == "value-one"
    )
    assert await credential_names(keychain, scope_type="global") == {
        f"{LATEST}:global": LATEST,
        f"{V1}:global": V1,
    }

    secret_manager.add(V2, "value-two")
    assert (
        await push(keychain_http, signing_key, "SECRET_VERSION_ADD", V2) == 1
    )  # the global alias alone

    assert await fetch_secret(LATEST, keychain=keychain, provider=provider) == "value-two"
    assert (
        await fetch_secret(LATEST, execution_id=42, keychain=keychain, provider=provider)
        == "value-one"
    )
    assert await credential_names(keychain, scope_type="global") == {
        f"{LATEST}:global": LATEST,
        f"{V1}:global": V1,
        f"{V2}:global": V2,
    }


async def test_a_disabled_version_leaves_the_execution_that_pinned_it(
    keychain: KeychainClient,
    keychain_http: httpx.AsyncClient,
    signing_key: rsa.RSAPrivateKey,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    """A pinned version that can no longer be read is not served on: the execution's next step
    resolves `latest` again."""
    secret_manager.add(V1, "value-one")
    assert (
        await fetch_secret(LATEST, execution_id=42, keychain=keychain, provider=provider)
        == "value-one"
    )
    secret_manager.add(V2, "value-two")
    assert (
        await push(keychain_http, signing_key, "SECRET_VERSION_ADD", V2) == 0
    )  # nothing global cached

    secret_manager.disable(V1)
    assert (
        await push(keychain_http, signing_key, "SECRET_VERSION_DISABLE", V1) == 2
    )  # the alias and the version

    assert (
        await fetch_secret(LATEST, execution_id=42, keychain=keychain, provider=provider)
        == "value-two"
    )
    assert await credential_names(keychain, execution_id=42) == {f"{LATEST}:42": V2, f"{V2}:42": V2}
    with pytest.raises(SecretError, match="FailedPrecondition"):  # as Secret Manager answers it
        await fetch_secret(V1, execution_id=43, keychain=keychain, provider=provider)


async def test_a_burst_across_two_servers_makes_one_provider_call(
    test_settings: Settings,
    own_database: str,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    """The alias's fill lease covers the fetch: workers on two replicas, one call for `latest`."""
    secret_manager.add(V1, "value-one")
    async with replica(test_settings, own_database) as a, replica(test_settings, own_database) as b:
        workers = [KeychainClient(BASE_URL, http_client=server.client) for server in (a, b)]
        values = await asyncio.gather(
            *(
                fetch_secret(LATEST, execution_id=42, keychain=workers[i % 2], provider=provider)
                for i in range(10)
            )
        )
        assert values == ["value-one"] * 10
        assert dict(secret_manager.calls) == {LATEST: 1}
        assert await credential_names(workers[1], execution_id=42) == {
            f"{LATEST}:42": V1,
            f"{V1}:42": V1,
        }


async def test_a_failed_write_of_the_version_entry_never_fails_the_step(
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_manager.add(V1, "value-one")
    written = (200, {}, entry_body(f"{LATEST}:42", {}, execution_id=42))
    failing = (500, {}, {"status_code": 500, "detail": "internal error; see the server log"})
    server = ScriptedServer(MISS, written, failing)
    async with server.http_client() as http:
        keychain = KeychainClient(BASE_URL, http_client=http)
        assert (
            await fetch_secret(LATEST, execution_id=42, keychain=keychain, provider=provider)
            == "value-one"
        )
    assert [(r["method"], r["path"]) for r in server.requests][1:] == [
        ("POST", f"/api/auth-cache/{LATEST}:42"),
        ("POST", f"/api/auth-cache/{V1}:42"),
    ]
    assert_logged_degraded(caplog, 500, "KeychainUnavailable", "internal error", "value-one")
    assert V1 in caplog.text


@pytest.mark.parametrize("kind", ["env", "file", "access only"])
async def test_providers_that_cannot_name_a_version_cache_latest_as_before(
    keychain: KeychainClient, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Env and file providers, and a third-party one with only `access`: `latest` is what they
    serve for it, cached under the alias alone."""
    monkeypatch.setenv("KEYCHAIN_SECRET_OPENAI_API_KEY", "local-value")
    (tmp_path / "openai-api-key").write_text("local-value\n")

    class AccessOnly:
        async def access(self, name: str) -> str:
            return "local-value"

    provider = {"env": EnvProvider(), "file": FileProvider(tmp_path), "access only": AccessOnly()}[
        kind
    ]
    assert (
        await fetch_secret(LATEST, execution_id=42, keychain=keychain, provider=provider)
        == "local-value"
    )
    assert await credential_names(keychain, execution_id=42) == {f"{LATEST}:42": LATEST}


async def test_a_version_read_by_project_id_is_cached_as_asked(keychain: KeychainClient) -> None:
    """Secret Manager names the version it served by the project's number. Asked for by project
    id, it is the same version, no alias: one entry, named as asked, as before."""
    by_project_id = "projects/my-project/secrets/openai-api-key/versions"

    class AsSecretManagerNamesIt:
        """Version 1 is the latest; answers name the project by number."""

        async def access(self, name: str) -> str:
            return (await self.access_version(name)).value

        async def access_version(self, name: str) -> SecretVersion:
            served = name.replace("projects/my-project/", "projects/123/").replace(
                "/versions/latest", "/versions/1"
            )
            return SecretVersion(served, "value-one")

    provider = AsSecretManagerNamesIt()
    assert (
        await fetch_secret(
            f"{by_project_id}/1", execution_id=42, keychain=keychain, provider=provider
        )
        == "value-one"
    )
    assert await credential_names(keychain, execution_id=42) == {
        f"{by_project_id}/1:42": f"{by_project_id}/1"
    }
    # Through `latest`, the version takes the name Secret Manager gave it, the one its events use.
    assert (
        await fetch_secret(
            f"{by_project_id}/latest", execution_id=43, keychain=keychain, provider=provider
        )
        == "value-one"
    )
    assert await credential_names(keychain, execution_id=43) == {
        f"{by_project_id}/latest:43": V1,
        f"{V1}:43": V1,
    }
