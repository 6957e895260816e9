"""/metrics as an operator sees it: scrape after real calls, read the counters."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, text, update

from app.asgi import create_app
from app.db.engine import Database, make_engine
from app.db.tables import keychain
from app.errors import DatabaseUnavailable
from app.keychain.repository import SWEEP_LOCK_ID
from app.keychain.sweeper import sweep_once
from tests.bodies import entry_body
from tests.conftest import asgi_client, free_port

BODY = entry_body({"api_key": "sk-metrics-secret"})


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    """Every sample of one /metrics answer, keyed by (name, labels)."""
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def _expire(connection, key: str) -> None:
    await connection.execute(
        update(keychain)
        .where(keychain.c.cache_key == key)
        .values(expires_at=func.now() - timedelta(seconds=1))
    )


async def test_hits_and_misses_by_reason(client, connection):
    await client.post("/api/auth-cache/hit-me", json=BODY)
    await client.post("/api/auth-cache/stale", json=BODY)
    await _expire(connection, "stale")
    assert (await client.get("/api/auth-cache/hit-me")).status_code == 200
    assert (await client.get("/api/auth-cache/hit-me")).status_code == 200
    assert (await client.get("/api/auth-cache/never-written")).status_code == 404
    assert (await client.get("/api/auth-cache/stale")).status_code == 404

    samples = await scrape(client)
    assert value(samples, "keychain_cache_hits_total") == 2
    assert value(samples, "keychain_cache_misses_total", reason="absent") == 1
    assert value(samples, "keychain_cache_misses_total", reason="expired") == 1


async def test_writes_deletes_and_execution_cleanups(client):
    await client.post("/api/auth-cache/k", json=BODY)
    await client.post("/api/auth-cache/k", json=BODY)
    await client.post("/api/auth-cache/other", json=BODY)
    assert (await client.delete("/api/auth-cache/k")).status_code == 204
    assert (await client.delete("/api/auth-cache/k")).status_code == 404  # nothing deleted
    for key, execution_id, parent in (("a:7", 7, None), ("b:8", 8, 7), ("c:9", 9, None)):
        await client.post(
            f"/api/auth-cache/{key}",
            json={**BODY, "execution_id": execution_id, "parent_execution_id": parent},
        )
    assert (await client.delete("/api/executions/7/auth-cache")).json() == {"deleted": 2}

    samples = await scrape(client)
    assert value(samples, "keychain_cache_writes_total", outcome="created") == 5
    assert value(samples, "keychain_cache_writes_total", outcome="replaced") == 1
    assert value(samples, "keychain_cache_deletes_total") == 1
    assert value(samples, "keychain_execution_cleanups_total") == 1
    assert value(samples, "keychain_execution_cleanup_rows_total") == 2


async def test_sweeps_count_passes_by_result_and_rows(
    app, client, connection, database, engine, test_settings
):
    metrics = app.state.runtime.metrics
    for key in ("old-1", "old-2", "old-3"):
        await client.post(f"/api/auth-cache/{key}", json=BODY)
        await _expire(connection, key)

    # Skipped first: once this test's transaction sweeps, it holds the lock until rollback.
    async with engine.connect() as other_replica, other_replica.begin():
        await other_replica.execute(
            text("SELECT pg_advisory_xact_lock(:id)"), {"id": SWEEP_LOCK_ID}
        )
        assert not (
            await sweep_once(database, batch_size=2, metrics=metrics, ended_retention_seconds=3600)
        ).swept
    assert (
        await sweep_once(database, batch_size=2, metrics=metrics, ended_retention_seconds=3600)
    ).deleted == 3
    unreachable = Database(
        make_engine(test_settings, f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    )
    try:
        with pytest.raises(DatabaseUnavailable):
            await sweep_once(
                unreachable, batch_size=2, metrics=metrics, ended_retention_seconds=3600
            )
    finally:
        await unreachable.dispose()

    samples = await scrape(client)
    assert value(samples, "keychain_sweeps_total", result="swept") == 1
    assert value(samples, "keychain_sweeps_total", result="skipped") == 1
    assert value(samples, "keychain_sweeps_total", result="failed") == 1
    assert value(samples, "keychain_swept_rows_total") == 3


async def test_request_latency_is_labelled_by_route_template_never_by_key(client):
    key = "projects/123/secrets/openai-api-key/versions/1:4242"
    await client.post(f"/api/auth-cache/{key}", json=BODY)
    await client.get(f"/api/auth-cache/{key}")
    await client.get("/api/auth-cache/missing-key-xyz")

    answer = await client.get("/metrics")
    assert "openai-api-key" not in answer.text and "missing-key-xyz" not in answer.text
    samples = await scrape(client)
    route = "/api/auth-cache/{cache_key}"
    count = "keychain_request_duration_seconds_count"
    assert value(samples, count, method="POST", route=route, status="200") == 1
    assert value(samples, count, method="GET", route=route, status="200") == 1
    assert value(samples, count, method="GET", route=route, status="404") == 1
    routes = {dict(labels)["route"] for name, labels in samples if name == count}
    assert routes <= {route, "/metrics"}


async def test_entries_by_scope_count_live_rows_only(client, connection):
    await client.post("/api/auth-cache/g1", json=BODY)
    await client.post("/api/auth-cache/g2", json=BODY)
    await client.post("/api/auth-cache/g-old", json=BODY)
    await _expire(connection, "g-old")
    await client.post("/api/auth-cache/e:5", json={**BODY, "execution_id": 5})

    samples = await scrape(client)
    assert value(samples, "keychain_entries", scope_type="global") == 2
    assert value(samples, "keychain_entries", scope_type="execution") == 1
    assert value(samples, "keychain_entries", scope_type="session") == 0
    assert value(samples, "keychain_database_up") == 1


async def test_metrics_are_open_and_out_of_the_schema_when_tokens_are_configured(make_app):
    app = make_app(api_tokens="ci:worker:ci-worker-token-0123456789")
    async with asgi_client(app) as client:
        assert (await client.get("/api/auth-cache/k")).status_code == 401
        samples = await scrape(client)
        schema = (await client.get("/schema/openapi.json")).json()
    denied = {"method": "GET", "route": "/api/auth-cache/{cache_key}", "status": "401"}
    assert value(samples, "keychain_request_duration_seconds_count", **denied) == 1
    assert "/metrics" not in schema["paths"]


async def test_each_app_has_its_own_registry(make_app, client):
    await client.post("/api/auth-cache/k", json=BODY)
    await client.get("/api/auth-cache/k")
    other = make_app()
    async with asgi_client(other) as fresh:
        assert value(await scrape(fresh), "keychain_cache_hits_total") == 0
    assert value(await scrape(client), "keychain_cache_hits_total") == 1


async def test_with_the_database_down_the_counters_are_still_served(down_client):
    assert (await down_client.get("/api/auth-cache/k")).status_code == 503
    samples = await scrape(down_client)
    assert value(samples, "keychain_database_up") == 0
    assert value(samples, "keychain_invalidation_listener_up") == 0
    assert not [name for name, _ in samples if name == "keychain_entries"]
    unavailable = {"method": "GET", "route": "/api/auth-cache/{cache_key}", "status": "503"}
    assert value(samples, "keychain_request_duration_seconds_count", **unavailable) == 1


async def test_invalidation_listener_up_once_the_server_listens(own_database, test_settings):
    # The lifespan starts the listener, on a database of the test's own: it LISTENs on a
    # connection of its own, which the test's rolled-back transaction cannot stand in for.
    app = create_app(msgspec.structs.replace(test_settings, database_url=own_database))
    async with app.lifespan(), asgi_client(app) as client:
        deadline = time.monotonic() + 10
        while value(await scrape(client), "keychain_invalidation_listener_up") != 1:
            assert time.monotonic() < deadline, "the listener did not connect"
            await asyncio.sleep(0.05)
