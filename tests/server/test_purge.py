"""Purge by credential: one call drops every entry of a credential name, from the API (admin) or
the `keychain purge` command, and every replica's memory forgets them."""

from __future__ import annotations

import logging

import pytest_asyncio

from app.cli import EXIT_OK
from tests.bodies import entry_body
from tests.conftest import TEST_KEY, TEST_KEY_ID, asgi_client
from tests.server.replicas import read_into_memory, replica, until
from tests.server.test_cli import keychain

WORKER_TOKEN = "purge-worker-token-0123456789"
ADMIN_TOKEN = "purge-admin-token-0123456789"
LEAKED = "projects/123/secrets/openai-api-key/versions/1"
# cache key -> (credential name, execution id); None: global
ENTRIES = {
    f"{LEAKED}:41": (LEAKED, 41),
    f"{LEAKED}:42": (LEAKED, 42),
    f"{LEAKED}:global": (LEAKED, None),
    # Not the same name, though it starts like it: a purge matches names exactly.
    f"{LEAKED}0:42": (f"{LEAKED}0", 42),
    "projects/123/secrets/openai-api-key/versions/2:42": (
        "projects/123/secrets/openai-api-key/versions/2",
        42,
    ),
}
PURGE = "/api/credentials/auth-cache"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body(credential_name: str, execution_id: int | None) -> dict[str, object]:
    return entry_body(
        {"value": "sk-leaked"},
        credential_type="secret_manager",
        credential_name=credential_name,
        execution_id=execution_id,
        scope_type="global" if execution_id is None else "execution",
    )


@pytest_asyncio.fixture(loop_scope="session")
async def api(make_app):
    app = make_app(
        api_tokens=f"ci:worker:{WORKER_TOKEN},ops:admin:{ADMIN_TOKEN}", allow_open_api=False
    )
    async with asgi_client(app) as client:
        for key, (name, execution_id) in ENTRIES.items():
            answer = await client.post(
                f"/api/auth-cache/{key}", json=body(name, execution_id), headers=bearer(ADMIN_TOKEN)
            )
            assert answer.status_code == 200
        yield client


async def live_keys(client) -> set[str]:
    return {
        key
        for key in ENTRIES
        if (await client.get(f"/api/auth-cache/{key}", headers=bearer(ADMIN_TOKEN))).status_code
        == 200
    }


async def test_an_admin_purges_every_entry_of_a_name_and_the_count_says_how_many(api, caplog):
    caplog.set_level(logging.INFO, logger="keychain.audit")
    answer = await api.delete(
        PURGE, params={"credential_name": LEAKED}, headers=bearer(ADMIN_TOKEN)
    )
    assert (answer.status_code, answer.json()) == (200, {"deleted": 3})
    assert await live_keys(api) == {
        f"{LEAKED}0:42",
        "projects/123/secrets/openai-api-key/versions/2:42",
    }
    [event] = [
        r
        for r in caplog.records
        if r.name == "keychain.audit" and r.audit_action == "purgeCredential"
    ]
    assert (event.outcome, event.actor, event.credential_name, event.scope_type, event.deleted) == (
        "ok",
        "ops",
        LEAKED,
        None,
        3,
    )
    again = await api.delete(PURGE, params={"credential_name": LEAKED}, headers=bearer(ADMIN_TOKEN))
    assert again.json() == {"deleted": 0}


async def test_a_purge_may_keep_to_one_scope(api):
    answer = await api.delete(
        PURGE,
        params={"credential_name": LEAKED, "scope_type": "global"},
        headers=bearer(ADMIN_TOKEN),
    )
    assert answer.json() == {"deleted": 1}
    assert {f"{LEAKED}:41", f"{LEAKED}:42"} <= await live_keys(api)
    assert f"{LEAKED}:global" not in await live_keys(api)


async def test_a_worker_may_not_purge_and_a_purge_needs_a_name(api, caplog):
    caplog.set_level(logging.INFO, logger="keychain.audit")
    denied = await api.delete(
        PURGE, params={"credential_name": LEAKED}, headers=bearer(WORKER_TOKEN)
    )
    assert denied.status_code == 403
    assert [(r.outcome, r.actor) for r in caplog.records if r.name == "keychain.audit"] == [
        ("denied", "ci")
    ]
    for params in ({}, {"credential_name": ""}, {"credential_name": LEAKED, "scope_type": "local"}):
        answer = await api.delete(PURGE, params=params, headers=bearer(ADMIN_TOKEN))
        assert answer.status_code == 400, params
    assert len(await live_keys(api)) == len(ENTRIES)


async def test_a_purge_from_the_api_or_the_command_reaches_every_replicas_memory(
    test_settings, own_database, repo_root
):
    async with replica(test_settings, own_database) as a, replica(test_settings, own_database) as b:

        async def fill() -> None:
            for key, (name, execution_id) in ENTRIES.items():
                assert (
                    await a.client.post(f"/api/auth-cache/{key}", json=body(name, execution_id))
                ).status_code in (200, 201)
            for server in (a, b):
                for key in ENTRIES:
                    await read_into_memory(server, key)

        async def forgotten() -> bool:
            return all(
                server.process.tier.get(key) is None
                for server in (a, b)
                for key in ENTRIES
                if key.startswith(f"{LEAKED}:")
            )

        await fill()
        assert (await a.client.delete(PURGE, params={"credential_name": LEAKED})).json() == {
            "deleted": 3
        }
        await until(forgotten)
        assert (await b.client.get(f"/api/auth-cache/{LEAKED}:42")).status_code == 404
        assert b.process.tier.get(f"{LEAKED}0:42") is not None  # another name: still in memory

        await fill()
        done = keychain(
            repo_root,
            "purge",
            LEAKED,
            "--scope",
            "execution",
            KEYCHAIN_DATABASE_URL=own_database,
            KEYCHAIN_ENCRYPTION_KEYS=f"{TEST_KEY_ID}:{TEST_KEY}",
        )
        assert done.returncode == EXIT_OK, done.stderr
        assert done.stdout.strip() == f"purged 2 entries of {LEAKED} in execution scope"
        assert '"audit_action": "purgeCredential"' in done.stderr

        async def executions_forgotten() -> bool:
            return all(
                server.process.tier.get(f"{LEAKED}:{e}") is None
                for server in (a, b)
                for e in (41, 42)
            )

        await until(executions_forgotten)
        for server in (a, b):
            assert (await server.client.get(f"/api/auth-cache/{LEAKED}:42")).status_code == 404
            assert (await server.client.get(f"/api/auth-cache/{LEAKED}:global")).status_code == 200
