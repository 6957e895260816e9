"""Paths a newcomer gets wrong: an empty cache key, a page that does not exist. Every answer is
the JSON error body, saying what to do instead."""

from __future__ import annotations

import pytest

from tests.bodies import entry_body
from tests.conftest import asgi_client

BODY = entry_body({"api_key": "sk-routes-0123456789"})
WORKER_TOKEN = "routes-worker-token-0123456789abcdef"
NO_SUCH_ROUTE = {
    "status_code": 404,
    "detail": "no such route; every route is listed at /schema/openapi.json (Swagger UI at /schema)",
}


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/api/auth-cache/", "cache key is empty"),
        ("/api/auth-cache//", "cache key must not start or end with '/' or contain '//'"),
        ("/api/auth-cache/?execution_id=42", "cache key is empty"),
    ],
)
async def test_get_with_an_empty_key_is_400_not_the_list(client, path, detail):
    assert (await client.post("/api/auth-cache/listed:global", json=BODY)).status_code == 200
    answer = await client.get(path)
    assert answer.status_code == 400
    assert answer.json() == {"status_code": 400, "detail": detail}
    # The list is where it always was.
    listed = await client.get("/api/auth-cache")
    assert listed.status_code == 200
    assert [item["cache_key"] for item in listed.json()["items"]] == ["listed:global"]


async def test_a_worker_asking_for_an_empty_key_hears_about_the_key_not_the_admin_role(make_app):
    async with asgi_client(
        make_app(api_tokens=f"ci:worker:{WORKER_TOKEN}", allow_open_api=False)
    ) as client:
        headers = {"Authorization": f"Bearer {WORKER_TOKEN}"}
        answer = await client.get("/api/auth-cache/", headers=headers)
        assert answer.json() == {"status_code": 400, "detail": "cache key is empty"}
        # The list itself still needs an admin.
        assert (await client.get("/api/auth-cache", headers=headers)).status_code == 403


@pytest.mark.parametrize(
    "path", ["/nope", "/api/nope", "/api/auth-cachex/k", "/schema/redoc", "/schema/nope.json"]
)
async def test_an_unknown_path_is_the_json_404_pointing_at_the_route_list(client, path):
    answer = await client.get(path, headers={"Accept": "text/html"})  # as a browser asks
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == NO_SUCH_ROUTE


async def test_routes_404s_keep_their_own_detail(client):
    missing = await client.get("/api/auth-cache/never-written:global")
    assert missing.status_code == 404
    assert missing.json() == {"status_code": 404, "detail": "no live entry for this key (absent)"}
    events = await client.post("/api/events/secret-manager", json={})
    assert events.status_code == 404
    assert "KEYCHAIN_PUBSUB_AUDIENCE" in events.json()["detail"]


async def test_the_schema_pages_that_exist_still_answer(client):
    assert (await client.get("/schema")).status_code == 200
    assert (await client.get("/schema/openapi.json")).json()["info"]["title"] == "Keychain"
