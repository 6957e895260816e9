"""The HTTP contract of DESIGN.md, through the real app on the test transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from app.db.tables import keychain
from tests.bodies import entry_body

GLOBAL_TOKEN = entry_body(
    {"access_token": "test123", "token_type": "bearer"},
    credential_type="oauth2_client_credentials",
    cache_type="token",
    scope_type="global",
    execution_id=None,
    parent_execution_id=None,
    credential_name="test_token",
    ttl_seconds=3600,
    expires_at=None,
)
SECRET_PATH = "projects/123/secrets/openai-api-key/versions/1"


def secret_body(execution_id: int, parent: int | None = None, value: str = "sk-demo") -> dict:
    return entry_body(
        {"value": value},
        credential_type="secret_manager",
        cache_type="secret",
        scope_type="execution",
        execution_id=execution_id,
        parent_execution_id=parent,
        credential_name=SECRET_PATH,
    )


async def test_put_then_get_returns_the_payload_and_counts_the_hit(client):
    created = await client.post("/api/auth-cache/test_token:global:bearer", json=GLOBAL_TOKEN)
    assert created.status_code == 200 and created.json()["created"] is True
    assert "data" not in created.json() and "token_data" not in created.json()
    assert created.json()["access_count"] == 0

    hit = await client.get("/api/auth-cache/test_token:global:bearer")
    assert hit.status_code == 200
    body = hit.json()
    assert body["data"] == {"access_token": "test123", "token_type": "bearer"}
    assert body["access_count"] == 1
    assert body["scope_type"] == "global" and body["cache_type"] == "token"
    assert body["credential_name"] == "test_token"
    assert body["accessed_at"] >= body["created_at"]


async def test_replacing_an_entry_says_so_and_resets_its_counters(client):
    await client.post("/api/auth-cache/k", json=GLOBAL_TOKEN)
    await client.get("/api/auth-cache/k")
    replaced = await client.post(
        "/api/auth-cache/k", json={**GLOBAL_TOKEN, "token_data": {"access_token": "new"}}
    )
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    assert replaced.json()["access_count"] == 0
    assert (await client.get("/api/auth-cache/k")).json()["data"] == {"access_token": "new"}


async def test_keys_may_contain_slashes(client):
    key = f"{SECRET_PATH}:42"
    assert (await client.post(f"/api/auth-cache/{key}", json=secret_body(42))).status_code == 200
    hit = await client.get(f"/api/auth-cache/{key}")
    assert hit.status_code == 200
    assert hit.json()["cache_key"] == key
    assert hit.json()["execution_id"] == 42


async def test_absent_key_is_404_with_a_reason(client):
    miss = await client.get("/api/auth-cache/never-written")
    assert miss.status_code == 404
    assert miss.json() == {"status_code": 404, "detail": "no live entry for this key (absent)"}


async def test_expired_entry_is_404_before_it_is_swept(client, connection):
    await client.post("/api/auth-cache/old", json=GLOBAL_TOKEN)
    await connection.execute(
        update(keychain)
        .where(keychain.c.cache_key == "old")
        .values(expires_at=func.now() - timedelta(seconds=1))
    )
    miss = await client.get("/api/auth-cache/old")
    assert miss.status_code == 404
    assert "expired" in miss.json()["detail"]
    # The miss did not count as a hit.
    count = await connection.scalar(
        select(keychain.c.access_count).where(keychain.c.cache_key == "old")
    )
    assert count == 0


@pytest.mark.parametrize("ttl", [3300, "3300", " 3300 "])
async def test_ttl_accepts_integers_and_numeric_strings(client, ttl):
    answer = await client.post("/api/auth-cache/t", json={**GLOBAL_TOKEN, "ttl_seconds": ttl})
    assert answer.status_code == 200
    meta = answer.json()
    assert meta["ttl_seconds"] == 3300
    lifetime = datetime.fromisoformat(meta["expires_at"]) - datetime.fromisoformat(
        meta["created_at"]
    )
    assert lifetime == timedelta(seconds=3300)


async def test_default_ttl_is_an_hour(client):
    body = {k: v for k, v in GLOBAL_TOKEN.items() if k != "ttl_seconds"}
    assert (await client.post("/api/auth-cache/d", json=body)).json()["ttl_seconds"] == 3600


async def test_expires_at_may_be_given_instead_of_a_ttl(client):
    expires = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    body = {**GLOBAL_TOKEN, "ttl_seconds": None, "expires_at": expires.isoformat()}
    meta = (await client.post("/api/auth-cache/e", json=body)).json()
    assert datetime.fromisoformat(meta["expires_at"]) == expires
    assert 590 <= meta["ttl_seconds"] <= 600


async def test_credential_name_defaults_to_the_key_prefix(client):
    body = entry_body({"v": 1})
    meta = (await client.post("/api/auth-cache/github:global:bearer", json=body)).json()
    assert meta["credential_name"] == "github"
    assert meta["scope_type"] == "global"


async def test_execution_id_alone_implies_execution_scope(client):
    body = entry_body({"v": 1}, credential_type="secret_manager", execution_id=7)
    assert (await client.post("/api/auth-cache/s:7", json=body)).json()["scope_type"] == "execution"


async def test_delete_answers_204_then_404(client):
    await client.post("/api/auth-cache/gone", json=GLOBAL_TOKEN)
    assert (await client.delete("/api/auth-cache/gone")).status_code == 204
    assert (await client.get("/api/auth-cache/gone")).status_code == 404
    assert (await client.delete("/api/auth-cache/gone")).status_code == 404


async def test_execution_cleanup_drops_the_execution_and_its_sub_executions_only(client):
    await client.post(f"/api/auth-cache/{SECRET_PATH}:100", json=secret_body(100))
    await client.post(f"/api/auth-cache/{SECRET_PATH}:101", json=secret_body(101, parent=100))
    await client.post(f"/api/auth-cache/{SECRET_PATH}:200", json=secret_body(200))
    await client.post("/api/auth-cache/test_token:global", json=GLOBAL_TOKEN)

    answer = await client.delete("/api/executions/100/auth-cache")
    assert answer.status_code == 200
    assert answer.json() == {"deleted": 2}
    assert (await client.get(f"/api/auth-cache/{SECRET_PATH}:101")).status_code == 404
    assert (await client.get(f"/api/auth-cache/{SECRET_PATH}:200")).status_code == 200
    assert (await client.get("/api/auth-cache/test_token:global")).status_code == 200


async def test_list_returns_metadata_only_with_filters_and_paging(client):
    for execution_id in (1, 2, 3):
        await client.post(
            f"/api/auth-cache/{SECRET_PATH}:{execution_id}", json=secret_body(execution_id)
        )
    await client.post("/api/auth-cache/test_token:global", json=GLOBAL_TOKEN)

    everything = (await client.get("/api/auth-cache")).json()
    assert everything["total"] == 4
    assert all("data" not in item for item in everything["items"])

    scoped = (
        await client.get("/api/auth-cache", params={"scope_type": "execution", "limit": 2})
    ).json()
    assert scoped["total"] == 3 and len(scoped["items"]) == 2
    rest = (
        await client.get(
            "/api/auth-cache", params={"scope_type": "execution", "limit": 2, "offset": 2}
        )
    ).json()
    assert [i["execution_id"] for i in scoped["items"] + rest["items"]] == [1, 2, 3]

    one = (await client.get("/api/auth-cache", params={"execution_id": 2})).json()
    assert [i["cache_key"] for i in one["items"]] == [f"{SECRET_PATH}:2"]
    named = (await client.get("/api/auth-cache", params={"credential_name": "test_token"})).json()
    assert named["total"] == 1


async def test_list_hides_expired_entries_unless_asked(client, connection):
    await client.post("/api/auth-cache/old", json=GLOBAL_TOKEN)
    await connection.execute(update(keychain).values(expires_at=func.now() - timedelta(hours=1)))
    assert (await client.get("/api/auth-cache")).json()["total"] == 0
    assert (await client.get("/api/auth-cache", params={"include_expired": "true"})).json()[
        "total"
    ] == 1


async def test_health_does_no_io_and_ready_checks_the_database(client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json() == {"status": "ready"}


@pytest.mark.parametrize("key", ["trailing/", "a//b", "/leading"])
async def test_keys_that_url_routing_would_fold_are_refused(client, key):
    answer = await client.post(f"/api/auth-cache/{key}", json=GLOBAL_TOKEN)
    assert answer.status_code == 400
    assert "must not start or end with '/' or contain '//'" in answer.json()["detail"]
    folded = key.strip("/").replace("//", "/")
    assert (await client.get(f"/api/auth-cache/{folded}")).status_code == 404


async def test_a_bad_ttl_is_explained_without_echoing_it(client):
    answer = await client.post(
        "/api/auth-cache/k", json={**GLOBAL_TOKEN, "ttl_seconds": "ya29.token-by-mistake"}
    )
    assert answer.status_code == 400
    assert "whole number of seconds" in answer.json()["detail"]
    assert "ya29" not in answer.text


async def test_keys_whose_escapes_are_not_utf8_are_refused_not_merged(client):
    for key in ("%FF:global", "%FE:global"):
        answer = await client.post(f"/api/auth-cache/{key}", json=GLOBAL_TOKEN)
        assert answer.status_code == 400
        assert "not valid UTF-8" in answer.json()["detail"]
