"""KeychainClient against the real app: round trips, key encoding, errors and retries."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
import time
import traceback
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import BASE_URL, asgi_client
from tests.workerlib.helpers import ScriptedServer, entry_body
from workerlib import KeychainClient
from workerlib.errors import (
    BadRequest,
    Forbidden,
    InvalidKey,
    KeychainConfigError,
    KeychainError,
    KeychainUnavailable,
    RateLimited,
    TokenRefused,
    Unauthorized,
    UnreadableEntry,
)
from workerlib.models import Entry, EntryMeta

SECRET_PATH = "projects/123/secrets/openai-api-key/versions/1"


def counting_client(app, requests: list[httpx.Request]) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    async def record(request: httpx.Request) -> None:
        requests.append(request)

    client = asgi_client(app)
    client.event_hooks = {"request": [record]}
    return client


async def test_put_get_delete_round_trip(keychain: KeychainClient) -> None:
    meta = await keychain.put(
        f"{SECRET_PATH}:42",
        {"value": "sk-test"},
        credential_type="secret_manager",
        cache_type="secret",
        scope_type="execution",
        execution_id=42,
        ttl_seconds=600,
    )
    assert isinstance(meta, EntryMeta)
    assert meta.cache_key == f"{SECRET_PATH}:42"
    assert meta.credential_name == SECRET_PATH  # the part before the first ':'
    assert meta.access_count == 0 and meta.ttl_seconds == 600

    entry = await keychain.get(f"{SECRET_PATH}:42")
    assert isinstance(entry, Entry)
    assert entry.data == {"value": "sk-test"}
    assert entry.scope_type == "execution" and entry.execution_id == 42
    assert entry.access_count == 1
    assert entry.expires_at > entry.created_at

    assert await keychain.delete(f"{SECRET_PATH}:42") is True
    assert await keychain.get(f"{SECRET_PATH}:42") is None
    assert await keychain.delete(f"{SECRET_PATH}:42") is False


async def test_a_miss_is_none_not_an_error(keychain: KeychainClient) -> None:
    assert await keychain.get("never-written:global") is None


async def test_put_replaces_an_existing_entry(keychain: KeychainClient) -> None:
    await keychain.put("svc:global", {"v": 1}, credential_type="bearer")
    await keychain.put("svc:global", {"v": 2}, credential_type="bearer")
    entry = await keychain.get("svc:global")
    assert entry is not None and entry.data == {"v": 2}


async def test_cleanup_execution_drops_its_entries_and_sub_executions_only(
    keychain: KeychainClient,
) -> None:
    await keychain.put("a:7", {"v": 1}, credential_type="t", execution_id=7)
    await keychain.put("b:7", {"v": 1}, credential_type="t", execution_id=7)
    await keychain.put("a:8", {"v": 1}, credential_type="t", execution_id=8, parent_execution_id=7)
    await keychain.put("a:9", {"v": 1}, credential_type="t", execution_id=9)

    assert await keychain.cleanup_execution(7) == 3
    assert await keychain.get("a:7") is None and await keychain.get("a:8") is None
    assert await keychain.get("a:9") is not None
    assert await keychain.cleanup_execution(7) == 0


async def test_list_entries_gives_metadata_without_counting_a_hit(keychain: KeychainClient) -> None:
    await keychain.put("listed:5", {"value": "sk-list"}, credential_type="t", execution_id=5)
    page = await keychain.list_entries(execution_id=5)
    assert [item.cache_key for item in page.items] == ["listed:5"]
    assert page.items[0].access_count == 0
    assert not hasattr(page.items[0], "data")


@pytest.mark.parametrize(
    "key",
    [
        "projects/123/secrets/openai-api-key/versions/1:42",
        "name with spaces:global",
        "100%:global",
        "%2F-looks-encoded:global",
        "what?query=1&x:global",
        "frag#ment:global",
        "plus+and=equals;semi,comma:global",
        "ключ-🔑:global:oauth2",
        "dots/../and/./more:global",
        "quotes'\"<>{}|^`[]\\:global",
    ],
)
async def test_keys_round_trip_unchanged(keychain: KeychainClient, key: str) -> None:
    meta = await keychain.put(key, {"v": key}, credential_type="t", credential_name="n")
    assert meta.cache_key == key
    entry = await keychain.get(key)
    assert entry is not None and entry.cache_key == key and entry.data == {"v": key}
    assert await keychain.delete(key) is True


@pytest.mark.parametrize("key", ["", "/leading", "trailing/", "double//slash"])
async def test_keys_the_server_router_would_alter_are_refused_before_sending(
    keychain: KeychainClient, key: str
) -> None:
    with pytest.raises(InvalidKey):
        await keychain.put(key, {"v": 1}, credential_type="t")
    with pytest.raises(InvalidKey):
        await keychain.get(key)


async def test_a_4xx_carries_the_server_message_and_is_not_retried(app) -> None:  # type: ignore[no-untyped-def]
    requests: list[httpx.Request] = []
    async with (
        counting_client(app, requests) as http,
        KeychainClient(BASE_URL, http_client=http) as keychain,
    ):
        with pytest.raises(BadRequest) as caught:
            await keychain.put("k:global", {"v": 1}, credential_type="t", ttl_seconds="soon")
    assert caught.value.status_code == 400
    assert "ttl_seconds must be a whole number" in caught.value.detail
    assert "ttl_seconds must be a whole number" in str(caught.value)
    assert len(requests) == 1


async def test_execution_scope_without_an_execution_id_is_a_bad_request(
    keychain: KeychainClient,
) -> None:
    with pytest.raises(BadRequest, match="needs an execution_id"):
        await keychain.put("k:1", {"v": 1}, credential_type="t", scope_type="execution")


async def test_an_entry_sealed_under_a_lost_key_is_unreadable(make_app) -> None:  # type: ignore[no-untyped-def]
    other_key = base64.b64encode(bytes(range(100, 132))).decode()
    writer, reader = make_app(), make_app(encryption_keys=f"other:{other_key}")
    async with asgi_client(writer) as w, asgi_client(reader) as r:
        await KeychainClient(BASE_URL, http_client=w).put(
            "sealed:global", {"v": 1}, credential_type="t"
        )
        with pytest.raises(UnreadableEntry) as caught:
            await KeychainClient(BASE_URL, http_client=r).get("sealed:global")
    assert caught.value.status_code == 409


async def test_connection_errors_are_retried_up_to_the_bound_then_unavailable(
    closed_port: int,
) -> None:
    requests: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        keychain = KeychainClient(
            f"http://127.0.0.1:{closed_port}", http_client=http, retries=3, backoff=0.01
        )
        with pytest.raises(KeychainUnavailable) as caught:
            await keychain.get("k:global")
    assert len(requests) == 4  # the first try and three retries
    assert f"127.0.0.1:{closed_port}" in str(caught.value)


async def test_503_is_retried_honouring_retry_after_then_succeeds() -> None:
    hit = entry_body("k:global", {"v": 1}, key_id="k1", ttl_seconds=60)
    server = ScriptedServer(
        (503, {"Retry-After": "0"}, {"status_code": 503, "detail": "the database is unreachable"}),
        (429, {"Retry-After": "0"}, {"status_code": 429, "detail": "slow down"}),
        (200, {}, hit),
    )
    async with server.http_client() as http:
        entry = await KeychainClient(BASE_URL, http_client=http, retries=2).get("k:global")
    assert entry is not None and entry.data == {"v": 1}
    assert len(server.requests) == 3


async def test_503_after_the_retries_is_unavailable_with_the_server_detail() -> None:
    server = ScriptedServer(
        (503, {"Retry-After": "0"}, {"status_code": 503, "detail": "the database is unreachable"})
    )
    async with server.http_client() as http:
        with pytest.raises(KeychainUnavailable, match="the database is unreachable") as caught:
            await KeychainClient(BASE_URL, http_client=http, retries=2).get("k:global")
    assert caught.value.status_code == 503
    assert len(server.requests) == 3


async def test_a_retry_after_longer_than_we_wait_fails_now_instead_of_stalling() -> None:
    server = ScriptedServer(
        (429, {"Retry-After": "120"}, {"status_code": 429, "detail": "slow down"})
    )
    async with server.http_client() as http:
        with pytest.raises(RateLimited):
            await KeychainClient(BASE_URL, http_client=http, retries=5).get("k:global")
    assert len(server.requests) == 1


async def test_other_5xx_are_not_retried() -> None:
    server = ScriptedServer(
        (500, {}, {"status_code": 500, "detail": "internal error; see the server log"})
    )
    async with server.http_client() as http:
        with pytest.raises(KeychainUnavailable, match="500"):
            await KeychainClient(BASE_URL, http_client=http, retries=3).get("k:global")
    assert len(server.requests) == 1


async def test_configuration_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYCHAIN_SERVER_URL", "http://keychain.test/")
    monkeypatch.setenv("KEYCHAIN_API_TOKEN", "tok-from-env")
    server = ScriptedServer((404, {}, {"status_code": 404, "detail": "no live entry"}))
    async with server.http_client() as http:
        keychain = KeychainClient(http_client=http)
        assert keychain.base_url == "http://keychain.test"
        assert await keychain.get("k:global") is None
    assert server.requests[0]["headers"]["authorization"] == "Bearer tok-from-env"
    assert "tok-from-env" not in repr(keychain)


async def test_without_configuration_the_default_server_is_localhost_8082(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEYCHAIN_SERVER_URL", raising=False)
    monkeypatch.delenv("KEYCHAIN_API_TOKEN", raising=False)
    async with KeychainClient() as keychain:
        assert keychain.base_url == "http://localhost:8082"


async def test_close_leaves_an_injected_http_client_open(client: httpx.AsyncClient) -> None:
    async with KeychainClient(BASE_URL, http_client=client):
        pass
    assert not client.is_closed
    own = KeychainClient(BASE_URL)
    await own.close()
    assert own._http.is_closed


async def test_keychain_api_token_is_sent_and_the_server_enforces_it(
    make_app, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    app = make_app(api_tokens="ci:worker:tok-0123456789abcdef")
    async with asgi_client(app) as http:
        monkeypatch.delenv("KEYCHAIN_API_TOKEN", raising=False)
        with pytest.raises(Unauthorized) as caught:
            await KeychainClient(BASE_URL, http_client=http).get("k:global")
        assert caught.value.status_code == 401 and caught.value.detail
        with pytest.raises(Unauthorized):
            await KeychainClient(BASE_URL, token="not-the-token-0000", http_client=http).get(
                "k:global"
            )

        monkeypatch.setenv("KEYCHAIN_API_TOKEN", "tok-0123456789abcdef")
        keychain = KeychainClient(BASE_URL, http_client=http)
        await keychain.put("k:1", {"v": 1}, credential_type="t", execution_id=1)
        entry = await keychain.get("k:1")
        with pytest.raises(Forbidden):  # cleanup is an admin's job
            await keychain.cleanup_execution(1)
        # Either refusal is one thing to catch for "the token was refused".
        for refused in (
            KeychainClient(BASE_URL, token="not-the-token-0000", http_client=http).get("k:global"),
            keychain.cleanup_execution(1),
        ):
            with pytest.raises(TokenRefused):
                await refused
    assert entry is not None and entry.data == {"v": 1}


async def test_a_server_that_drops_packets_fails_within_the_connect_timeouts(
    silent_port: int,
) -> None:
    """The default client gives each connect 0.5 s, not the whole 5 s timeout: three attempts
    (the first and two retries) fail in about 1.5 s instead of about 15 s."""
    async with KeychainClient(f"http://127.0.0.1:{silent_port}", backoff=0.01) as keychain:
        started = time.monotonic()
        with pytest.raises(KeychainUnavailable, match="ConnectTimeout, 3 attempts"):
            await asyncio.wait_for(keychain.get("k:global"), timeout=6)
        elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 3.0


async def test_a_token_mounted_from_a_file_loses_its_trailing_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYCHAIN_API_TOKEN", " tok-0123456789abcdef\n")
    server = ScriptedServer((404, {}, {"status_code": 404, "detail": "no live entry"}))
    async with server.http_client() as http:
        assert await KeychainClient(BASE_URL, http_client=http).get("k:global") is None
    assert server.requests[0]["headers"]["authorization"] == "Bearer tok-0123456789abcdef"


BAD_TOKENS = ["tök-0123456789", "tok-01234\n56789", "tok-0123\x0056789", "tok\t0123456789"]


@pytest.mark.parametrize("token", BAD_TOKENS, ids=["non-ascii", "inner-newline", "nul", "tab"])
def test_a_token_that_cannot_be_a_header_is_refused_at_construction_without_its_value(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for make, setting in (
        (lambda: KeychainClient(BASE_URL, token=token), "token"),
        (
            lambda: KeychainClient(BASE_URL, environ={"KEYCHAIN_API_TOKEN": token}),
            "KEYCHAIN_API_TOKEN",
        ),
    ):
        with pytest.raises(KeychainConfigError, match=setting) as caught:
            make()
        assert isinstance(caught.value, KeychainError) and isinstance(caught.value, ValueError)
        shown = "".join(traceback.format_exception(caught.value))
        assert token not in shown and token.strip()[:8] not in shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:8082", "must be an http:// or https:// URL"),
        ("ftp://keychain.test", "must be an http:// or https:// URL"),
        ("http://", "must be an http:// or https:// URL"),
        ("http://keychain.test:port", "must be an http:// or https:// URL"),
        ("tok-looks-like-a-token-0000", "must be an http:// or https:// URL"),
        ("http://ops:pw-0000@keychain.test", r"\(http://keychain.test\) may hold only"),
        ("https://keychain.test/?token=tk-0000", r"\(https://keychain.test/\) may hold only"),
        ("http://keychain.test/#tk-0000", "may hold only"),
        ("http://keychain.test/a\nb", "control characters"),
    ],
)
def test_a_server_url_that_is_not_http_host_is_refused_at_construction(
    url: str, message: str
) -> None:
    for make, setting in (
        (lambda: KeychainClient(url), "base_url"),
        (lambda: KeychainClient(environ={"KEYCHAIN_SERVER_URL": url}), "KEYCHAIN_SERVER_URL"),
    ):
        with pytest.raises(KeychainConfigError, match=message) as caught:
            make()
        assert setting in str(caught.value)
        for hidden in ("pw-0000", "tk-0000", "tok-looks-like"):
            assert hidden not in "".join(traceback.format_exception(caught.value))


def test_a_server_url_with_a_path_and_a_trailing_slash_is_fine() -> None:
    assert (
        KeychainClient("https://gateway.test/keychain/ \n").base_url
        == "https://gateway.test/keychain"
    )


def _ca_pem(path: Path, name: str) -> Path:
    """A self-signed CA certificate (what a cluster's private CA hands out) written to `path`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _trusted_cas(keychain: KeychainClient) -> list[str]:
    """Common names of the CAs the client's own pool verifies the server against."""
    context: ssl.SSLContext = keychain._http._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    return [
        dict(item[0] for item in ca["subject"]).get("commonName", "")
        for ca in context.get_ca_certs()
    ]


async def test_tls_is_verified_against_keychain_ca_file_or_the_verify_argument(
    tmp_path: Path,
) -> None:
    env_ca, arg_ca = (
        _ca_pem(tmp_path / "env.pem", "env-ca"),
        _ca_pem(tmp_path / "arg.pem", "arg-ca"),
    )
    environ = {"KEYCHAIN_CA_FILE": str(env_ca)}
    async with KeychainClient("https://keychain.test", environ=environ) as keychain:
        assert _trusted_cas(keychain) == ["env-ca"]
    async with KeychainClient(
        "https://keychain.test", verify=str(arg_ca), environ=environ
    ) as keychain:
        assert _trusted_cas(keychain) == ["arg-ca"]  # the argument wins over the environment
    context = ssl.create_default_context(cafile=str(arg_ca))
    async with KeychainClient("https://keychain.test", verify=context, environ=environ) as keychain:
        assert keychain._http._transport._pool._ssl_context is context  # type: ignore[attr-defined]
    async with KeychainClient("https://keychain.test", environ={}) as keychain:
        assert "env-ca" not in _trusted_cas(keychain)  # the system's CAs, still verified
    async with KeychainClient("https://keychain.test", verify=False, environ=environ) as keychain:
        assert keychain._http._transport._pool._ssl_context.verify_mode == ssl.CERT_NONE  # type: ignore[attr-defined]


def test_an_unreadable_ca_file_is_refused_at_construction(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    with pytest.raises(KeychainConfigError, match=r"KEYCHAIN_CA_FILE names .*missing.pem"):
        KeychainClient(
            "https://keychain.test", environ={"KEYCHAIN_CA_FILE": str(tmp_path / "missing.pem")}
        )
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(KeychainConfigError, match=r"verify names .*garbage.pem"):
        KeychainClient("https://keychain.test", verify=str(tmp_path / "garbage.pem"))
    with pytest.raises(KeychainConfigError, match="not to http_client"):
        KeychainClient(BASE_URL, http_client=client, verify=False)
