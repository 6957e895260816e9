"""fetch_secret: the real Secret Manager client against the emulator, the real Keychain app."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import BASE_URL, asgi_client
from tests.secret_manager_emulator import SecretManagerEmulator
from tests.workerlib.helpers import (
    CACHE_FAILURE_IDS,
    CACHE_FAILURES,
    MISS,
    ScriptedServer,
    assert_logged_degraded,
    entry_body,
)
from workerlib import KeychainClient, fetch_secret
from workerlib.errors import SecretError, SecretNotFound
from workerlib.providers import EnvProvider, FileProvider, GoogleSecretManagerProvider

NAME = "projects/123/secrets/openai-api-key/versions/1"
VALUE = "sk-live-0000-very-secret"


async def test_a_miss_reads_the_provider_and_caches_execution_scoped(
    keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    secret_manager.add(NAME, VALUE)

    assert await fetch_secret(NAME, execution_id=42, keychain=keychain, provider=provider) == VALUE
    assert await fetch_secret(NAME, execution_id=42, keychain=keychain, provider=provider) == VALUE
    assert secret_manager.calls[NAME] == 1

    entry = await keychain.get(f"{NAME}:42")
    assert entry is not None
    assert entry.data == {"value": VALUE}
    assert entry.credential_name == NAME
    assert (entry.credential_type, entry.cache_type, entry.scope_type) == (
        "secret_manager",
        "secret",
        "execution",
    )
    assert entry.execution_id == 42
    assert entry.ttl_seconds == 3600
    assert entry.access_count == 2  # the second fetch_secret, then this read


async def test_25_concurrent_misses_make_one_provider_call(
    keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    secret_manager.add(NAME, VALUE)
    values = await asyncio.gather(
        *(
            fetch_secret(NAME, execution_id=7, keychain=keychain, provider=provider)
            for _ in range(25)
        )
    )
    assert values == [VALUE] * 25
    assert secret_manager.total_calls == 1


async def test_concurrent_misses_asking_different_providers_each_get_their_own(
    keychain: KeychainClient, tmp_path: Path
) -> None:
    """One load per key used to be shared whatever provider each caller named. (Across the
    cluster the key alone names the entry, so the server's fill coordination is off here: this
    is the process's own single flight.)"""
    keychain.fill_wait = 0
    values = {"team-a": "value-from-a", "team-b": "value-from-b"}
    providers = {}
    for team, value in values.items():
        (tmp_path / team).mkdir()
        (tmp_path / team / "openai-api-key").write_text(value)
        providers[team] = FileProvider(tmp_path / team)
    got = await asyncio.gather(
        *(
            fetch_secret(NAME, execution_id=8, keychain=keychain, provider=providers[team])
            for team in values
        )
    )
    assert got == list(values.values())


async def test_another_execution_does_not_see_the_entry(
    keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    secret_manager.add(NAME, VALUE)
    await fetch_secret(NAME, execution_id=1, keychain=keychain, provider=provider)
    await fetch_secret(NAME, execution_id=2, keychain=keychain, provider=provider)
    assert secret_manager.calls[NAME] == 2

    await keychain.cleanup_execution(1)
    assert await keychain.get(f"{NAME}:1") is None
    assert await keychain.get(f"{NAME}:2") is not None


async def test_without_an_execution_the_secret_is_cached_globally(
    keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    secret_manager.add(NAME, VALUE)
    await fetch_secret(NAME, keychain=keychain, provider=provider)
    entry = await keychain.get(f"{NAME}:global")
    assert entry is not None and entry.scope_type == "global" and entry.execution_id is None


async def test_server_down_still_returns_the_secret_and_logs_degraded_without_it(
    down_keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_manager.add(NAME, VALUE)
    with caplog.at_level(logging.INFO):
        assert (
            await fetch_secret(NAME, execution_id=3, keychain=down_keychain, provider=provider)
            == VALUE
        )

    degraded = [
        r for r in caplog.records if r.name.startswith("workerlib") and r.levelno == logging.WARNING
    ]
    assert degraded and "degraded" in degraded[0].getMessage()
    assert NAME in degraded[0].getMessage()
    assert VALUE not in caplog.text
    assert all(VALUE not in repr(r.__dict__) for r in caplog.records)


async def test_a_failing_server_5xx_still_returns_the_secret(
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_manager.add(NAME, VALUE)
    server = ScriptedServer(
        (500, {}, {"status_code": 500, "detail": "internal error; see the server log"})
    )
    async with server.http_client() as http:
        keychain = KeychainClient(BASE_URL, http_client=http)
        assert (
            await fetch_secret(NAME, execution_id=3, keychain=keychain, provider=provider) == VALUE
        )
    assert "degraded" in caplog.text and VALUE not in caplog.text


async def test_a_missing_secret_raises_an_error_that_names_it(
    keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    missing = "projects/123/secrets/does-not-exist/versions/4"
    with pytest.raises(SecretNotFound) as caught:
        await fetch_secret(missing, execution_id=5, keychain=keychain, provider=provider)
    assert missing in str(caught.value)
    assert caught.value.secret_name == missing
    assert await keychain.get(f"{missing}:5") is None  # nothing cached for a miss


async def test_an_unreadable_entry_is_a_miss_and_is_overwritten(
    make_app,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,  # type: ignore[no-untyped-def]
) -> None:
    secret_manager.add(NAME, VALUE)
    other_key = base64.b64encode(bytes(range(100, 132))).decode()
    old_app, new_app = make_app(encryption_keys=f"old:{other_key}"), make_app()
    async with asgi_client(old_app) as old, asgi_client(new_app) as new:
        await KeychainClient(BASE_URL, http_client=old).put(
            f"{NAME}:9", {"value": "stale"}, credential_type="secret_manager", execution_id=9
        )
        keychain = KeychainClient(BASE_URL, http_client=new)
        assert (
            await fetch_secret(NAME, execution_id=9, keychain=keychain, provider=provider) == VALUE
        )
        entry = await keychain.get(f"{NAME}:9")
    assert entry is not None and entry.data == {"value": VALUE}
    assert secret_manager.calls[NAME] == 1


async def test_with_no_provider_given_the_operators_configured_one_serves_a_miss(
    keychain: KeychainClient,
    client: httpx.AsyncClient,
    secret_manager: SecretManagerEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_manager.add(NAME, VALUE)
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", secret_manager.address)
    monkeypatch.delenv("KEYCHAIN_SECRET_PROVIDER", raising=False)
    assert await fetch_secret(NAME, execution_id=11, keychain=keychain) == VALUE
    assert await keychain.get(f"{NAME}:11") is not None
    # The setting is read once per client, at its first miss: a worker configured for env.
    monkeypatch.setenv("KEYCHAIN_SECRET_PROVIDER", "env")
    monkeypatch.setenv("KEYCHAIN_SECRET_OPENAI_API_KEY", "from-env")
    async with KeychainClient(BASE_URL, http_client=client) as env_worker:
        assert await fetch_secret(NAME, execution_id=12, keychain=env_worker) == "from-env"


async def test_a_hit_never_builds_a_provider(
    keychain: KeychainClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await keychain.put(
        f"{NAME}:12", {"value": VALUE}, credential_type="secret_manager", execution_id=12
    )
    monkeypatch.setenv("KEYCHAIN_SECRET_PROVIDER", "vault")  # building it would fail
    assert await fetch_secret(NAME, execution_id=12, keychain=keychain) == VALUE
    with pytest.raises(SecretError, match="unknown KEYCHAIN_SECRET_PROVIDER 'vault'"):
        await fetch_secret(NAME, execution_id=13, keychain=keychain)


async def test_env_provider_reads_the_secret_id_as_a_prefixed_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYCHAIN_SECRET_OPENAI_API_KEY", VALUE)
    monkeypatch.setenv("OPENAI_API_KEY", "not-this-one")
    assert await EnvProvider().access(NAME) == VALUE
    with pytest.raises(SecretNotFound, match="projects/123/secrets/nope/versions/1"):
        await EnvProvider().access("projects/123/secrets/nope/versions/1")


async def test_env_provider_never_reaches_the_workers_own_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYCHAIN_API_TOKEN", VALUE)
    for name in (
        "KEYCHAIN_API_TOKEN",
        "keychain-api-token",
        "projects/1/secrets/KEYCHAIN_API_TOKEN/versions/1",
    ):
        with pytest.raises(
            SecretNotFound, match="KEYCHAIN_SECRET_KEYCHAIN_API_TOKEN is not set"
        ) as caught:
            await EnvProvider().access(name)
        assert VALUE not in str(caught.value)


async def test_file_provider_reads_one_file_per_secret_id(tmp_path: Path) -> None:
    (tmp_path / "openai-api-key").write_text(VALUE + "\n")
    assert await FileProvider(tmp_path).access(NAME) == VALUE
    with pytest.raises(SecretNotFound, match="nope"):
        await FileProvider(tmp_path).access("projects/123/secrets/nope/versions/1")
    with pytest.raises(SecretNotFound):
        await FileProvider(tmp_path).access("../etc/passwd")


async def test_file_provider_reads_a_kubernetes_secret_volume(tmp_path: Path) -> None:
    """Kubernetes mounts each key as a link through `..data` to a timestamped directory."""
    volume = tmp_path / "secrets"
    (volume / "..2026_01_01_00_00_00.1").mkdir(parents=True)
    (volume / "..2026_01_01_00_00_00.1" / "openai-api-key").write_text(VALUE)
    (volume / "..data").symlink_to("..2026_01_01_00_00_00.1")
    (volume / "openai-api-key").symlink_to("..data/openai-api-key")
    assert await FileProvider(volume).access(NAME) == VALUE
    # The directory itself reached through a link is the same directory.
    (tmp_path / "linked").symlink_to(volume)
    assert await FileProvider(tmp_path / "linked").access(NAME) == VALUE


async def test_file_provider_refuses_a_link_out_of_its_directory(tmp_path: Path) -> None:
    outside = tmp_path / "serviceaccount"
    outside.mkdir()
    (outside / "token").write_text(VALUE)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "sa-token").symlink_to(outside / "token")
    (secrets_dir / "via-dir").symlink_to(outside)
    with pytest.raises(SecretError, match="links outside") as caught:
        await FileProvider(secrets_dir).access("projects/1/secrets/sa-token/versions/1")
    assert VALUE not in str(caught.value)
    (secrets_dir / "loop").symlink_to("loop")
    with pytest.raises(SecretError, match="cannot read"):
        await FileProvider(secrets_dir).access("loop")


@pytest.mark.parametrize(
    ("status", "headers", "body", "error_class", "detail"), CACHE_FAILURES, ids=CACHE_FAILURE_IDS
)
@pytest.mark.parametrize("failing", ["read", "write"])
async def test_a_failing_cache_never_fails_the_step(
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
    caplog: pytest.LogCaptureFixture,
    failing: str,
    status: int,
    headers: dict,
    body: object,
    error_class: str,
    detail: str,
) -> None:
    secret_manager.add(NAME, VALUE)
    server = (
        ScriptedServer((status, headers, body))
        if failing == "read"
        else ScriptedServer(MISS, (status, headers, body))
    )
    async with server.http_client() as http:
        keychain = KeychainClient(BASE_URL, http_client=http)
        assert (
            await fetch_secret(NAME, execution_id=3, keychain=keychain, provider=provider) == VALUE
        )
    assert secret_manager.calls[NAME] == 1
    # A read that failed is not followed by a write-back to the cache that just failed.
    assert [r["method"] for r in server.requests] == (
        ["GET"] if failing == "read" else ["GET", "POST"]
    )
    assert_logged_degraded(caplog, status, error_class, detail, VALUE)


async def test_the_providers_own_errors_still_reach_the_caller(
    provider: GoogleSecretManagerProvider, secret_manager: SecretManagerEmulator
) -> None:
    server = ScriptedServer((401, {}, {"status_code": 401, "detail": "a bearer token is required"}))
    async with server.http_client() as http:
        with pytest.raises(SecretNotFound):
            await fetch_secret(
                NAME,
                execution_id=3,
                keychain=KeychainClient(BASE_URL, http_client=http),
                provider=provider,
            )


async def test_the_servers_retry_after_1_on_503_is_waited_for_with_the_default_settings(
    provider: GoogleSecretManagerProvider, secret_manager: SecretManagerEmulator
) -> None:
    """The server answers 503 with Retry-After: 1 while its database is away; a blip that
    short must be ridden out (and the cache used), not turned straight into a degraded step."""
    secret_manager.add(NAME, VALUE)
    unavailable = (
        503,
        {"Retry-After": "1"},
        {"status_code": 503, "detail": "the database is unreachable"},
    )
    hit = entry_body(
        f"{NAME}:3", {"value": "from-the-cache"}, execution_id=3, credential_type="secret_manager"
    )
    server = ScriptedServer(unavailable, unavailable, (200, {}, hit))
    async with server.http_client() as http:
        keychain = KeychainClient(BASE_URL, http_client=http)  # the defaults a worker gets
        started = time.monotonic()
        assert (
            await fetch_secret(NAME, execution_id=3, keychain=keychain, provider=provider)
            == "from-the-cache"
        )
        elapsed = time.monotonic() - started
    assert len(server.requests) == 3
    assert elapsed >= 2.0  # each retry waited the second the server asked for
    assert secret_manager.total_calls == 0


async def test_a_silent_server_falls_back_to_the_provider_in_seconds(
    silent_port: int, provider: GoogleSecretManagerProvider, secret_manager: SecretManagerEmulator
) -> None:
    secret_manager.add(NAME, VALUE)
    async with KeychainClient(f"http://127.0.0.1:{silent_port}") as keychain:  # a worker's defaults
        started = time.monotonic()
        value = await asyncio.wait_for(
            fetch_secret(NAME, execution_id=3, keychain=keychain, provider=provider), 10
        )
        elapsed = time.monotonic() - started
    assert value == VALUE
    assert elapsed < 4.0  # three 0.5 s connects, jittered backoff, the provider; not ~15 s


async def test_no_google_credentials_is_said_in_workerlib_s_words(
    keychain: KeychainClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Credentials that cannot be found (and no look at a metadata server: this is no GCE VM).
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.delenv("SECRET_MANAGER_EMULATOR_HOST", raising=False)
    provider = GoogleSecretManagerProvider(environ={})
    with pytest.raises(SecretError) as raised:
        await fetch_secret(NAME, execution_id=8, keychain=keychain, provider=provider)
    message = str(raised.value)
    assert message.startswith("no Google credentials for Secret Manager")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "SECRET_MANAGER_EMULATOR_HOST" in message
