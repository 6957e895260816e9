"""Bearer tokens, roles and the audit trail."""

from __future__ import annotations

import hashlib
import logging

import pytest
import pytest_asyncio

from app.auth import TokenTable
from app.errors import ConfigurationError
from tests.bodies import entry_body
from tests.conftest import asgi_client

WORKER_TOKEN = "worker-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789ab"
ADMIN_DIGEST = hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()
BODY = entry_body({"api_key": "sk-audited-secret"})


@pytest_asyncio.fixture(loop_scope="session")
async def secured(make_app):
    app = make_app(api_tokens=f"ci-worker:worker:{WORKER_TOKEN},ops:admin:sha256:{ADMIN_DIGEST}")
    async with asgi_client(app, client=("10.1.2.3", 5555)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers", [{}, bearer("wrong-token-0123456789"), {"Authorization": WORKER_TOKEN}]
)
async def test_missing_or_wrong_token_is_401_with_a_challenge(secured, headers):
    answer = await secured.get("/api/auth-cache/k", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "bearer token" in answer.json()["detail"]


async def test_refusals_carry_the_request_id_and_are_counted_as_refusals(secured):
    for path, headers, status in (
        ("/api/auth-cache/k", bearer("wrong-token-0123456789"), 401),
        ("/api/auth-cache", bearer(WORKER_TOKEN), 403),
    ):
        answer = await secured.get(path, headers={**headers, "X-Request-ID": f"refused-{status}"})
        assert (answer.status_code, answer.headers["x-request-id"]) == (status, f"refused-{status}")
    metrics = (await secured.get("/metrics", headers=bearer(ADMIN_TOKEN))).text
    assert 'route="/api/auth-cache/{cache_key}",status="401"' in metrics
    assert 'route="/api/auth-cache",status="403"' in metrics


async def test_worker_reads_writes_and_deletes_single_entries(secured):
    assert (
        await secured.post("/api/auth-cache/k", json=BODY, headers=bearer(WORKER_TOKEN))
    ).status_code == 200
    assert (await secured.get("/api/auth-cache/k", headers=bearer(WORKER_TOKEN))).status_code == 200
    assert (
        await secured.delete("/api/auth-cache/k", headers=bearer(WORKER_TOKEN))
    ).status_code == 204


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/auth-cache"), ("DELETE", "/api/executions/1/auth-cache")]
)
async def test_admin_calls_are_403_for_a_worker_and_open_to_an_admin(secured, method, path):
    denied = await secured.request(method, path, headers=bearer(WORKER_TOKEN))
    assert denied.status_code == 403
    assert "'admin'" in denied.json()["detail"]
    # The admin token is configured only as a SHA-256 digest.
    assert (await secured.request(method, path, headers=bearer(ADMIN_TOKEN))).status_code == 200


async def test_health_ready_and_the_openapi_ui_stay_open(secured):
    for path in ("/health", "/ready", "/schema", "/schema/openapi.json"):
        assert (await secured.get(path)).status_code == 200, path


async def test_the_openapi_document_declares_the_bearer_scheme(secured):
    document = (await secured.get("/schema/openapi.json")).json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert document["paths"]["/api/auth-cache/{cache_key}"]["get"]["security"] == [{"bearer": []}]


async def test_writes_deletes_and_denials_are_audited_without_data_or_tokens(secured, caplog):
    caplog.set_level(logging.INFO, logger="keychain.audit")
    await secured.post("/api/auth-cache/k", json=BODY, headers=bearer(WORKER_TOKEN))
    await secured.post(
        "/api/auth-cache/k",
        json=entry_body(1, credential_type="x"),
        headers=bearer(WORKER_TOKEN),
    )
    await secured.delete("/api/auth-cache/k", headers=bearer(WORKER_TOKEN))
    await secured.delete("/api/executions/9/auth-cache", headers=bearer(ADMIN_TOKEN))
    await secured.get("/api/auth-cache", headers=bearer(WORKER_TOKEN))
    await secured.get("/api/auth-cache/k", headers=bearer("not-a-real-token-123"))
    await secured.get("/api/auth-cache/k", headers=bearer(WORKER_TOKEN))  # reads are not audited

    events = [
        (r.audit_action, r.outcome, r.status, r.actor, r.cache_key, r.client)
        for r in caplog.records
        if r.name == "keychain.audit"
    ]
    assert events == [
        ("putEntry", "ok", 200, "ci-worker", "k", "10.1.2.3"),
        ("putEntry", "failed", 400, "ci-worker", "k", "10.1.2.3"),
        ("deleteEntry", "ok", 204, "ci-worker", "k", "10.1.2.3"),
        ("cleanupExecution", "ok", 200, "ops", "execution:9", "10.1.2.3"),
        ("listEntries", "denied", 403, "ci-worker", None, "10.1.2.3"),
        ("getEntry", "denied", 401, None, "k", "10.1.2.3"),
    ]
    for secret in ("sk-audited-secret", WORKER_TOKEN, ADMIN_TOKEN, "not-a-real-token-123"):
        assert secret not in caplog.text
        assert all(secret not in str(r.__dict__) for r in caplog.records)


async def test_with_no_tokens_the_api_is_open_and_start_up_says_so(make_app, caplog):
    caplog.set_level(logging.WARNING)
    make_app(api_tokens="")
    assert "NO API TOKENS CONFIGURED" in caplog.text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ci:reader:" + "x" * 20, "role must be one of worker, issuer, admin"),
        ("ci:worker:short", "at least 16 characters"),
        ("ci:worker:sha256:abc", "64 hex digits"),
        ("bad name:worker:" + "x" * 20, "name must be"),
    ],
)
def test_bad_token_configuration_is_refused_without_echoing_it(spec, message):
    with pytest.raises(ConfigurationError, match=message) as caught:
        TokenTable.parse(spec)
    assert spec.rsplit(":", 1)[1] not in str(caught.value)


async def test_a_shared_database_requires_tokens_and_keys(make_app, test_settings):
    with pytest.raises(ConfigurationError, match="KEYCHAIN_API_TOKENS is required"):
        make_app(api_tokens="", allow_open_api=False)
    with pytest.raises(ConfigurationError, match="KEYCHAIN_ENCRYPTION_KEYS is required"):
        make_app(encryption_keys="")
    # Local mode (the embedded database) may run open, with a generated key.
    assert make_app(
        database_url=None, encryption_keys="", allow_open_api=False
    ).state.runtime.tokens.is_open
