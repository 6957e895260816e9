"""Payloads are sealed with AES-256-GCM before they reach the table."""

from __future__ import annotations

import base64
import os
import stat

import pytest
from sqlalchemy import text

from app.crypto import KeyRing
from app.errors import ConfigurationError, UnreadableEntry

PLAINTEXT_SECRET = "sk-live-very-secret-value-4242"


async def test_the_data_column_never_holds_the_plaintext(client, connection):
    body = {"token_data": {"api_key": PLAINTEXT_SECRET}, "credential_type": "bearer"}
    await client.post("/api/auth-cache/openai:global", json=body)
    raw, key_id = (
        await connection.execute(
            text("SELECT data, key_id FROM noetl.keychain WHERE cache_key = 'openai:global'")
        )
    ).one()
    assert PLAINTEXT_SECRET.encode() not in raw
    assert b"api_key" not in raw
    assert key_id == "test-k1"
    assert (await client.get("/api/auth-cache/openai:global")).json()["data"]["api_key"] == PLAINTEXT_SECRET


async def test_a_ciphertext_copied_to_another_row_does_not_open(client, connection):
    body = {"token_data": {"api_key": PLAINTEXT_SECRET}, "credential_type": "bearer"}
    await client.post("/api/auth-cache/victim:global", json=body)
    await client.post("/api/auth-cache/attacker:global", json={**body, "token_data": {"api_key": "mine"}})
    await connection.execute(
        text(
            "UPDATE noetl.keychain SET data = (SELECT data FROM noetl.keychain WHERE cache_key = 'victim:global')"
            " WHERE cache_key = 'attacker:global'"
        )
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
        (f"k1:{base64.b64encode(b'short').decode()}", "AES-256 needs 32"),
        (base64.b64encode(bytes(range(32))).decode(), "entry 1 must look like"),
        (f"k1:{base64.b64encode(bytes(32)).decode()},k1:{base64.b64encode(bytes(32)).decode()}", "twice"),
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
