"""Least privilege: execution tokens, token limits, who wrote what.

Each test replays a finding of the security review (issue 11) against the real app and shows
what the same request gets now.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from datetime import timedelta

import jwt
import pytest
import pytest_asyncio
from sqlalchemy import func, select, update

from app.audit import ReadAudit
from app.auth import Principal
from app.db.tables import keychain
from tests.conftest import asgi_client

W1 = "w1-worker-token-0123456789"
W2 = "w2-worker-token-9876543210"
ENGINE = "engine-issuer-token-0123456789"
CI_READER = "ci-reader-token-0123456789ab"
TOKENS = f"w1:worker:{W1},w2:worker:{W2},engine:issuer:{ENGINE},ci:worker:{CI_READER}"
LIMITS = "ci:read:ci-*,ci:write:ci-scratch"
SECRET = "sk-execution-42-secret"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body(token_data: dict, **fields) -> dict:
    return {"token_data": token_data, "credential_type": "secret_manager", **fields}


@pytest.fixture
def secured_app(make_app):
    return make_app(api_tokens=TOKENS, api_token_limits=LIMITS)


@pytest_asyncio.fixture(loop_scope="session")
async def api(secured_app):
    async with asgi_client(secured_app) as client:
        yield client


async def mint(api, execution_id: int, **grants) -> str:
    answer = await api.post(
        "/api/execution-tokens",
        json={"execution_id": execution_id, **grants},
        headers=bearer(ENGINE),
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["execution_id"] == execution_id
    return answer.json()["token"]


async def test_an_execution_token_reaches_its_own_execution_and_not_another(api):
    t42, t43 = await mint(api, 42), await mint(api, 43)
    key = "/api/auth-cache/projects/1/secrets/db/versions/1:42"
    written = await api.post(
        key, json=body({"value": SECRET}, execution_id=42), headers=bearer(t42)
    )
    assert written.status_code == 200
    assert (await api.get(key, headers=bearer(t42))).json()["data"] == {"value": SECRET}

    # The review: w2 read and deleted what w1 cached for execution 42.
    stolen = await api.get(key, headers=bearer(t43))
    assert stolen.status_code == 403
    assert stolen.json()["detail"] == (
        "token 'execution:43' is bound to execution 43; it may not read entries of execution 42"
    )
    assert SECRET not in stolen.text
    assert (await api.delete(key, headers=bearer(t43))).status_code == 403
    # Writing its own execution id under the other execution's key does not take it over.
    hijack = await api.post(key, json=body({"value": "mine"}, execution_id=43), headers=bearer(t43))
    assert hijack.status_code == 403
    # Nor can it write an entry for another execution.
    foreign = await api.post(
        "/api/auth-cache/x:42", json=body({"v": 1}, execution_id=42), headers=bearer(t43)
    )
    assert foreign.status_code == 403
    assert (await api.get(key, headers=bearer(t42))).json()["data"] == {"value": SECRET}


async def test_an_execution_token_reaches_its_sub_executions(api):
    token = await mint(api, 42)
    sub = body({"v": "sub"}, execution_id=4201, parent_execution_id=42)
    assert (
        await api.post("/api/auth-cache/s:4201", json=sub, headers=bearer(token))
    ).status_code == 200
    assert (await api.get("/api/auth-cache/s:4201", headers=bearer(token))).status_code == 200
    sub_token = await mint(api, 4201, parent_execution_id=42)
    assert (await api.get("/api/auth-cache/s:4201", headers=bearer(sub_token))).status_code == 200


async def test_global_entries_only_as_the_token_grants(api):
    assert (
        await api.post(
            "/api/auth-cache/crm:global:oauth2",
            json=body({"access_token": "at"}, credential_name="crm"),
            headers=bearer(W1),
        )
    ).status_code == 200
    assert (
        await api.post(
            "/api/auth-cache/hr:global",
            json=body({"v": "hr"}, credential_name="hr"),
            headers=bearer(W1),
        )
    ).status_code == 200
    reader = await mint(api, 7, read=["crm"])
    assert (
        await api.get("/api/auth-cache/crm:global:oauth2", headers=bearer(reader))
    ).status_code == 200
    denied = await api.get("/api/auth-cache/hr:global", headers=bearer(reader))
    assert denied.status_code == 403
    assert "credential 'hr': it is not in the token's read grants" in denied.json()["detail"]
    # A read grant is not a write grant.
    overwrite = body(
        {"access_token": "attacker"}, credential_name="crm", ttl_seconds=30 * 24 * 3600
    )
    assert (
        await api.post("/api/auth-cache/crm:global:oauth2", json=overwrite, headers=bearer(reader))
    ).status_code == 403
    writer = await mint(api, 7, write=["crm*"])
    assert (
        await api.post("/api/auth-cache/crm:global:oauth2", json=overwrite, headers=bearer(writer))
    ).status_code == 200


async def test_another_principal_cannot_replace_a_live_global_entry(api, connection):
    """The review: w2 wrote crm:global:oauth2 with its own access token over w1's."""
    key = "/api/auth-cache/crm:global:oauth2"
    assert (
        await api.post(
            key, json=body({"access_token": "w1"}, credential_name="crm"), headers=bearer(W1)
        )
    ).status_code == 200
    planted = await api.post(
        key, json=body({"access_token": "w2"}, credential_name="crm"), headers=bearer(W2)
    )
    assert planted.status_code == 403
    assert "another principal wrote it" in planted.json()["detail"]
    assert (await api.delete(key, headers=bearer(W2))).status_code == 403
    entry = (await api.get(key, headers=bearer(W2))).json()
    assert entry["data"] == {"access_token": "w1"} and entry["written_by"] == "w1"
    # The writer itself refreshes it; once expired it is no one's and anyone may write it.
    assert (
        await api.post(
            key, json=body({"access_token": "w1b"}, credential_name="crm"), headers=bearer(W1)
        )
    ).status_code == 200
    await connection.execute(update(keychain).values(expires_at=func.now() - timedelta(seconds=1)))
    assert (
        await api.post(
            key, json=body({"access_token": "w2"}, credential_name="crm"), headers=bearer(W2)
        )
    ).status_code == 200
    row = (
        await connection.execute(
            select(keychain.c.written_by).where(keychain.c.cache_key == "crm:global:oauth2")
        )
    ).one()
    assert row.written_by == "w2"


async def test_ending_an_execution_ends_its_tokens(api):
    token = await mint(api, 99)
    sub_token = await mint(api, 9901, parent_execution_id=99)
    assert (
        await api.post(
            "/api/auth-cache/k:99", json=body({"v": 1}, execution_id=99), headers=bearer(token)
        )
    ).status_code == 200
    assert (await api.delete("/api/executions/99/auth-cache", headers=bearer(ENGINE))).json() == {
        "deleted": 1
    }
    for leaked in (token, sub_token):
        answer = await api.post(
            "/api/auth-cache/k:99", json=body({"v": 2}, execution_id=99), headers=bearer(leaked)
        )
        assert answer.status_code == 401
        assert (
            answer.json()["detail"] == "execution 99 has ended; its execution tokens no longer work"
        )
        assert answer.headers["www-authenticate"].startswith("Bearer")
    again = await api.post(
        "/api/execution-tokens", json={"execution_id": 99}, headers=bearer(ENGINE)
    )
    assert again.status_code == 409


async def test_expired_forged_and_foreign_tokens_are_401(api, test_settings):
    expired = await mint(api, 5, ttl_seconds=1)
    claims = jwt.decode(expired, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1
    foreign_key = os.urandom(32)
    forged = jwt.encode(
        {**claims, "exe": 6, "exp": claims["exp"] + 3600},
        foreign_key,
        algorithm="HS256",
        headers={"kid": "test-s1"},
    )
    unknown_kid = jwt.encode(claims, foreign_key, algorithm="HS256", headers={"kid": "elsewhere"})
    stale = jwt.encode(
        {**claims, "exp": claims["iat"] - 1},
        base64.b64decode(test_settings.token_signing_keys.split(":")[1]),
        algorithm="HS256",
        headers={"kid": "test-s1"},
    )
    for token, detail in (
        (forged, "execution token is malformed or its signature does not verify"),
        (unknown_kid, "execution token is signed by a key this server does not have"),
        (stale, "execution token has expired; ask the engine for a new one"),
    ):
        answer = await api.get("/api/auth-cache/k:6", headers=bearer(token))
        assert (answer.status_code, answer.json()["detail"]) == (401, detail)


async def test_roles_mint_and_read_apart(api):
    assert (
        await api.post("/api/execution-tokens", json={"execution_id": 1}, headers=bearer(W1))
    ).status_code == 403
    # The engine mints and cleans up; it does not read secrets.
    assert (await api.get("/api/auth-cache/k:1", headers=bearer(ENGINE))).status_code == 403
    token = await mint(api, 1)
    assert (
        await api.post("/api/execution-tokens", json={"execution_id": 2}, headers=bearer(token))
    ).status_code == 403
    bad = await api.post(
        "/api/execution-tokens", json={"execution_id": 1, "write": ["*"]}, headers=bearer(ENGINE)
    )
    assert bad.status_code == 400 and "would grant all of them" in bad.json()["detail"]


async def test_a_configured_token_can_be_limited_by_credential_prefix(api):
    assert (
        await api.post("/api/auth-cache/ci-deploy:global", json=body({"v": 1}), headers=bearer(W1))
    ).status_code == 200
    assert (
        await api.post("/api/auth-cache/prod-db:global", json=body({"v": 2}), headers=bearer(W1))
    ).status_code == 200
    assert (
        await api.get("/api/auth-cache/ci-deploy:global", headers=bearer(CI_READER))
    ).status_code == 200
    assert (
        await api.get("/api/auth-cache/prod-db:global", headers=bearer(CI_READER))
    ).status_code == 403
    assert (
        await api.post(
            "/api/auth-cache/ci-deploy:global", json=body({"v": 3}), headers=bearer(CI_READER)
        )
    ).status_code == 403
    assert (
        await api.post(
            "/api/auth-cache/ci-scratch:global", json=body({"v": 4}), headers=bearer(CI_READER)
        )
    ).status_code == 200


async def test_every_read_is_an_audit_event_with_its_actor(api, secured_app, caplog):
    token = await mint(api, 42)
    await api.post(
        "/api/auth-cache/db:42",
        json=body({"value": SECRET}, execution_id=42),
        headers=bearer(token),
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert (
                await api.get("/api/auth-cache/db:42", headers=bearer(token))
            ).status_code == 200
        assert (await api.get("/api/auth-cache/nope:42", headers=bearer(token))).status_code == 404
        assert (await api.get("/api/auth-cache/db:42", headers=bearer(W2))).status_code == 200
        secured_app.state.runtime.process.read_audit.flush()
    reads = sorted(
        (r.actor, cache_key, r.outcome, count)
        for r in caplog.records
        if r.name == "keychain.audit" and r.audit_action == "getEntry"
        for cache_key, count in r.reads.items()
    )
    assert reads == [
        ("execution:42", "db:42", "hit", 3),
        ("execution:42", "nope:42", "absent", 1),
        ("w2", "db:42", "hit", 1),
    ]
    lines = [r for r in caplog.records if r.getMessage() in ("cache hit", "cache miss")]
    assert {r.actor for r in lines} == {"execution:42", "w2"}
    assert SECRET not in caplog.text


async def test_an_issuer_without_a_signing_key_is_refused_at_start(make_app):
    from app.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="KEYCHAIN_TOKEN_SIGNING_KEYS is not"):
        make_app(api_tokens=TOKENS, token_signing_keys="")


@pytest.mark.parametrize(
    "token", ["CHANGE-ME-CHANGE-ME-CHANGE-ME", "a" * 32, "<your token here 0123456789>"]
)
async def test_placeholder_tokens_are_refused_at_start(make_app, token):
    from app.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="looks like a placeholder") as caught:
        make_app(api_tokens=f"ci:worker:{token}")
    assert token not in str(caught.value)


async def test_a_refused_read_does_not_count_as_a_hit(api, connection):
    owner = await mint(api, 42)
    await api.post(
        "/api/auth-cache/db:42",
        json=body({"value": SECRET}, execution_id=42),
        headers=bearer(owner),
    )
    intruder = await mint(api, 43)
    for _ in range(3):
        assert (await api.get("/api/auth-cache/db:42", headers=bearer(intruder))).status_code == 403
    count = (await connection.execute(select(keychain.c.access_count))).scalar_one()
    assert count == 0


async def test_a_minted_token_is_never_logged(api, caplog):
    with caplog.at_level(logging.DEBUG):
        token = await mint(api, 8, read=["crm"])
        await api.get("/api/auth-cache/k:8", headers=bearer(token))
    assert token not in caplog.text
    assert token.split(".")[2] not in repr([r.__dict__ for r in caplog.records])
    assert any(
        r.getMessage() == "audit" and r.audit_action == "mintExecutionToken" for r in caplog.records
    )


async def test_a_token_already_verified_still_stops_at_its_expiry(api):
    # exp is in whole seconds, so a 1 s token may have under a second left: on a busy machine
    # it had expired before its first use.
    token = await mint(api, 12, ttl_seconds=3)
    assert (await api.get("/api/auth-cache/k:12", headers=bearer(token))).status_code == 404
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
    answer = await api.get("/api/auth-cache/k:12", headers=bearer(token))
    assert (answer.status_code, answer.json()["detail"]) == (
        401,
        "execution token has expired; ask the engine for a new one",
    )


def test_a_flush_of_many_keys_is_a_few_events_of_a_hundred_keys_each(caplog):
    audit, worker = ReadAudit(), Principal(name="w1", role="worker")
    for i in range(250):
        audit.record(worker, f"k{i}", "hit")
    audit.record(worker, "k0", "hit")
    audit.record(worker, "gone", "absent")
    with caplog.at_level(logging.INFO, logger="keychain.audit"):
        assert audit.flush() == 4
    events = [r for r in caplog.records if r.name == "keychain.audit"]
    hits = [e for e in events if e.outcome == "hit"]
    assert sorted(len(e.reads) for e in hits) == [50, 100, 100]
    assert sum(e.count for e in hits) == 251
    assert {k: n for e in hits for k, n in e.reads.items()}["k0"] == 2
    assert [e.reads for e in events if e.outcome == "absent"] == [{"gone": 1}]
    assert audit.flush() == 0  # nothing is emitted twice


def test_reads_waiting_past_the_bound_are_flushed_rather_than_kept(caplog):
    audit, worker = ReadAudit(max_pending=10), Principal(name="w1", role="worker")
    with caplog.at_level(logging.INFO, logger="keychain.audit"):
        for i in range(25):
            audit.record(worker, f"k{i}", "hit")
        audit.flush()
    keys = [k for r in caplog.records if r.name == "keychain.audit" for k in r.reads]
    assert sorted(keys) == sorted(f"k{i}" for i in range(25))
    assert len([r for r in caplog.records if r.name == "keychain.audit"]) == 3
