"""The HTTP contract of DESIGN.md, through the real app on the test transaction."""

from __future__ import annotations

import asyncio

GLOBAL_TOKEN = {
    "token_data": {"access_token": "test123", "token_type": "bearer"},
    "credential_type": "oauth2_client_credentials",
    "cache_type": "token",
    "scope_type": "global",
    "credential_name": "test_token",
    "ttl_seconds": 3600,
}


async def test_put_then_get_returns_the_payload_and_counts_the_hit(client):
    created = await client.post("/api/auth-cache/test_token:global:bearer", json=GLOBAL_TOKEN)
    assert created.status_code == 201
    assert "data" not in created.json() and "token_data" not in created.json()
    assert created.json()["access_count"] == 0

    hit = await client.get("/api/auth-cache/test_token:global:bearer")
    assert hit.status_code == 200
    body = hit.json()
    assert body["data"] == {"access_token": "test123", "token_type": "bearer"}
    assert body["access_count"] == 1
    assert body["scope_type"] == "global" and body["cache_type"] == "token"
    assert body["accessed_at"] >= body["created_at"]

