"""Upstream NoETL's worker client (noetl/worker/credential_cache.py), request for request.

It builds keys `{name}:{execution_id}`, `{name}:global:{token_type}` or `{name}:global`; POSTs
scope_type "local" (execution, keyed by execution_id or else parent_execution_id), "global"
(a token type) or "shared" (neither), with ttl_seconds 3600 or 604800 and no bearer token;
counts only a 200 as stored; reads a 404 as a miss; and takes 200, 204 or 404 on DELETE as done.
"""

from __future__ import annotations

import pytest

SECRET = {"password": "pg-secret"}


def upstream_payload(scope_type: str, ttl_seconds: int, **ids: int) -> dict:
    """The body its set_cached() sends (execution ids only when set, as it does)."""
    return {
        "token_data": SECRET,
        "credential_type": "postgres",
        "cache_type": "secret",
        "scope_type": scope_type,
        "ttl_seconds": ttl_seconds,
        **ids,
    }


@pytest.mark.parametrize(
    ("key", "payload", "stored_scope", "stored_execution"),
    [
        ("pg_main:42", upstream_payload("local", 3600, execution_id=42), "execution", 42),
        (
            "pg_main:43",
            upstream_payload("local", 3600, execution_id=43, parent_execution_id=42),
            "execution",
            43,
        ),
        # A sub-execution caching for its parent sends the parent's id alone.
        ("pg_main:42", upstream_payload("local", 3600, parent_execution_id=42), "execution", 42),
        ("crm:global:oauth2", upstream_payload("global", 604800), "global", None),
        ("pg_main:global", upstream_payload("shared", 604800), "global", None),
    ],
)
async def test_its_writes_are_stored_under_the_canonical_scope_and_read_back(
    client, key, payload, stored_scope, stored_execution
):
    written = await client.post(f"/api/auth-cache/{key}", json=payload)
    assert written.status_code == 200, written.text  # the only answer it counts as stored
    assert written.json()["created"] is True
    read = await client.get(f"/api/auth-cache/{key}")
    assert read.status_code == 200
    body = read.json()
    assert (body["scope_type"], body["execution_id"]) == (stored_scope, stored_execution)
    # What its get_cached() takes from the answer.
    assert body["data"] == SECRET
    assert (body["credential_type"], body["cache_type"]) == ("postgres", "secret")
    assert body["expires_at"]

    rewritten = await client.post(f"/api/auth-cache/{key}", json=payload)
    assert (rewritten.status_code, rewritten.json()["created"]) == (200, False)


async def test_shared_with_an_execution_id_is_the_execution_s(client):
    payload = upstream_payload("shared", 3600, execution_id=7)
    assert (await client.post("/api/auth-cache/pg_main:7", json=payload)).status_code == 200
    assert (await client.get("/api/auth-cache/pg_main:7")).json()["scope_type"] == "execution"


async def test_local_without_any_execution_id_is_refused_with_a_reason(client):
    answer = await client.post(
        "/api/auth-cache/pg_main:global", json=upstream_payload("local", 3600)
    )
    assert answer.status_code == 400
    assert answer.json()["detail"] == "scope_type 'execution' needs an execution_id"


async def test_a_miss_is_404_and_deleting_nothing_is_404(client):
    assert (await client.get("/api/auth-cache/pg_main:99")).status_code == 404  # get_cached: None
    await client.post(
        "/api/auth-cache/pg_main:99", json=upstream_payload("local", 3600, execution_id=99)
    )
    assert (
        await client.delete("/api/auth-cache/pg_main:99")
    ).status_code == 204  # delete_cached: True
    assert (
        await client.delete("/api/auth-cache/pg_main:99")
    ).status_code == 404  # also True for it
    assert (await client.get("/api/auth-cache/pg_main:99")).status_code == 404
