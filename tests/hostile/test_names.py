"""Credential names and types follow the key rule: no control characters. PostgreSQL text
cannot hold NUL at all, so before this rule a NUL in a name (or in the list filter) was a 500."""

from __future__ import annotations

import pytest
from hostile_support import tally
from sqlalchemy import func, select

from app.db.tables import keychain

BODY = {"token_data": {"api_key": "sk-name-test-31d0"}, "credential_type": "bearer"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("credential_name", "a\x00b"),
        ("credential_name", "line\nbreak"),
        ("credential_type", "bearer\x00"),
        ("credential_type", "\x1b[31mred"),
    ],
)
async def test_control_characters_in_names_are_400_and_nothing_is_stored(
    client, connection, field, value
):
    answer = await client.post("/api/auth-cache/names:global", json={**BODY, field: value})
    tally("control character in a name", answer.status_code)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"status_code": 400, "detail": f"{field} contains control characters"}
    assert await connection.scalar(select(func.count()).select_from(keychain)) == 0


async def test_a_nul_in_the_list_filter_is_400(client):
    answer = await client.get("/api/auth-cache", params={"credential_name": "a\x00b"})
    tally("NUL in the list filter", answer.status_code)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == "credential_name contains control characters"


async def test_names_with_unicode_and_punctuation_are_still_fine(client):
    name = "projects/🔑/secrets/api-key (prod) — ünïcode/versions/1"
    created = await client.post("/api/auth-cache/n:global", json={**BODY, "credential_name": name})
    assert created.status_code == 200
    listed = (await client.get("/api/auth-cache", params={"credential_name": name})).json()
    assert [item["cache_key"] for item in listed["items"]] == ["n:global"]
