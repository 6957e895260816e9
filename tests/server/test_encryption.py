"""Payloads are sealed with AES-256-GCM before they reach the table."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from sqlalchemy import select, update

from app.crypto import KeyRing
from app.db.tables import keychain
from app.errors import ConfigurationError, UnreadableEntry
from tests.bodies import entry_body

PLAINTEXT_SECRET = "sk-live-very-secret-value-4242"


async def test_the_data_column_never_holds_the_plaintext(client, connection):
    body = entry_body({"api_key": PLAINTEXT_SECRET})
    await client.post("/api/auth-cache/openai:global", json=body)
    raw, key_id = (
        await connection.execute(
            select(keychain.c.data, keychain.c.key_id).where(
                keychain.c.cache_key == "openai:global"
            )
        )
    ).one()
    assert PLAINTEXT_SECRET.encode() not in raw
    assert b"api_key" not in raw
    assert key_id == "test-k1"
    assert (await client.get("/api/auth-cache/openai:global")).json()["data"][
        "api_key"
    ] == PLAINTEXT_SECRET


async def test_a_ciphertext_copied_to_another_row_does_not_open(client, connection):
    body = entry_body({"api_key": PLAINTEXT_SECRET})
    await client.post("/api/auth-cache/victim:global", json=body)
    await client.post(
        "/api/auth-cache/attacker:global", json={**body, "token_data": {"api_key": "mine"}}
    )
    victims = select(keychain.c.data).where(keychain.c.cache_key == "victim:global")
    await connection.execute(
        update(keychain)
        .where(keychain.c.cache_key == "attacker:global")
        .values(data=victims.scalar_subquery())
    )
    answer = await client.get("/api/auth-cache/attacker:global")
    assert answer.status_code == 409
    assert "integrity check" in answer.json()["detail"]
    assert PLAINTEXT_SECRET not in answer.text


def _ring(*ids: str) -> KeyRing:
    return KeyRing.parse(",".join(f"{i}:{base64.b64encode(os.urandom(32)).decode()}" for i in ids))


def test_the_first_key_seals_and_every_key_opens():
    k1 = base64.b64encode(os.urandom(32)).decode()
    sealed_by_k1 = KeyRing.parse(f"k1:{k1}").seal(b"payload", b"key")
    rotated = KeyRing.parse(f"k2:{base64.b64encode(os.urandom(32)).decode()},k1:{k1}")
    assert rotated.seal(b"x", b"key").key_id == "k2"
    assert rotated.open(sealed_by_k1.envelope, b"key") == b"payload"


def test_a_key_no_longer_in_the_ring_fails_closed_with_its_id():
    sealed = _ring("gone").seal(b"payload", b"key")
    with pytest.raises(UnreadableEntry, match="'gone'"):
        _ring("k2").open(sealed.envelope, b"key")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("k1:not-base64!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "5 bytes; it must be 32"),
        (base64.b64encode(bytes(range(32))).decode(), "entry 1 must look like"),
        (
            f"k1:{base64.b64encode(os.urandom(32)).decode()},k1:{base64.b64encode(os.urandom(32)).decode()}",
            "twice",
        ),
        # Copied from an example and never replaced: all zeros, a repeated pattern.
        (f"k1:{base64.b64encode(bytes(32)).decode()}", "looks like a placeholder"),
        (f"k1:{base64.b64encode(b'0123' * 8).decode()}", "looks like a placeholder"),
    ],
)
def test_bad_key_configuration_is_refused_at_start_up(spec, message):
    with pytest.raises(ConfigurationError, match=message) as caught:
        KeyRing.parse(spec)
    key_material = spec.partition(":")[2] or spec
    assert key_material[:6] not in str(caught.value)


def test_local_mode_generates_a_private_key_file_once(tmp_path):
    first = KeyRing.load_or_create_local(tmp_path)
    key_file = tmp_path / "encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    sealed = first.seal(b"payload", b"key")
    # A restart (or a second replica on the same data directory) reads the same key.
    assert KeyRing.load_or_create_local(tmp_path).open(sealed.envelope, b"key") == b"payload"


async def test_an_older_ciphertext_replayed_onto_its_row_does_not_open(client, connection):
    """The review: the associated data bound only the cache key, so someone with write access
    to the table could put back yesterday's ciphertext of the same key."""
    key = "/api/auth-cache/crm:global:oauth2"
    await client.post(key, json=entry_body({"access_token": "revoked-yesterday"}))
    old = (await connection.execute(select(keychain.c.data))).scalar_one()
    await client.post(key, json=entry_body({"access_token": "current"}))
    await connection.execute(update(keychain).values(data=old))
    answer = await client.get(key)
    assert answer.status_code == 409
    assert "revoked-yesterday" not in answer.text


@pytest.mark.parametrize(
    "tampering",
    [
        {"execution_id": 43},  # moved to another execution, to pass its access check
        {"written_by": "someone-else"},  # made to look like another principal's
        {"credential_name": "granted-credential"},  # renamed into a grant
    ],
)
async def test_the_ciphertext_is_bound_to_the_rows_access_fields(client, connection, tampering):
    body = entry_body({"v": PLAINTEXT_SECRET}, execution_id=42)
    await client.post("/api/auth-cache/db:42", json=body)
    await connection.execute(update(keychain).values(tampering))
    answer = await client.get("/api/auth-cache/db:42")
    assert answer.status_code == 409
    assert PLAINTEXT_SECRET not in answer.text
