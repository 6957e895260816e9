"""Hostile HTTP input, one attack at a time: each gets a 4xx a person can act on, or is stored
as plain data; nothing is half-written, and a failed replace keeps the previous value."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from hostile_support import asgi_client, tally
from sqlalchemy import func, select

from app.db.tables import keychain
from app.settings import load_settings
from tests.conftest import qualified_name

SECRET = "sk-hostile-input-5c1e0f7a"
BODY = {"token_data": {"api_key": SECRET}, "credential_type": "bearer"}


def url(key: str) -> str:
    """Percent-encode everything but '/' and ':', so '%', '?', '#' and spaces stay in the key."""
    return "/api/auth-cache/" + quote(key, safe="/:")


async def row_count(connection) -> int:
    return await connection.scalar(select(func.count()).select_from(keychain))


def problem(answer) -> str:
    """What a person reads: the detail, plus Litestar's per-field specifics when it gives them."""
    body = answer.json()
    assert set(body) <= {"status_code", "detail", "extra"}, body
    assert body["status_code"] == answer.status_code
    return f"{body['detail']} {body.get('extra') or ''}"


# --- body size ------------------------------------------------------------------------------


async def _chunks(payload: bytes):
    for start in range(0, len(payload), 256):
        yield payload[start : start + 256]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_the_limit_is_413_naming_the_limit_and_nothing_is_stored(
    make_app, connection, framing
):
    body = {**BODY, "token_data": {"api_key": SECRET, "padding": "x" * 2000}}
    payload = json.dumps(body).encode()
    async with asgi_client(make_app(max_body_bytes=1024)) as client:
        content = payload if framing == "content-length" else _chunks(payload)
        answer = await client.post(
            url("big"), content=content, headers={"content-type": "application/json"}
        )
        tally(f"body over limit ({framing})", answer.status_code)
        assert answer.status_code == 413
        assert answer.json() == {
            "status_code": 413,
            "detail": "request body is larger than 1024 bytes (KEYCHAIN_MAX_BODY_BYTES)",
        }
        assert SECRET not in answer.text
        assert (await client.get(url("big"))).status_code == 404
        # Under the limit the same call is fine: the limit, not the endpoint, refused it.
        assert (await client.post(url("big"), json=BODY)).status_code == 200
    assert await row_count(connection) == 1


# --- key length and characters ----------------------------------------------------------------


async def test_a_512_character_key_is_stored_and_513_is_refused_saying_the_limit(
    client, connection
):
    longest = "k" * 511 + "é"
    assert (await client.post(url(longest), json=BODY)).status_code == 200
    hit = await client.get(url(longest))
    assert hit.status_code == 200 and hit.json()["cache_key"] == longest

    too_long = "k" * 513
    for method in ("POST", "GET", "DELETE"):
        answer = await client.request(
            method, url(too_long), json=BODY if method == "POST" else None
        )
        tally("key of 513 characters", answer.status_code)
        assert answer.status_code == 400
        assert answer.json()["detail"] == "cache key is 513 characters long; the limit is 512"
    assert await row_count(connection) == 1


@pytest.mark.parametrize(
    "encoded", ["%00", "%1f", "%7f", "%0a", "%0d%0a", "%09", "%c2%85", "%1b[31m"]
)
async def test_control_characters_in_a_key_are_400_for_every_method(client, connection, encoded):
    path = f"/api/auth-cache/before{encoded}after:global"
    for method in ("POST", "GET", "DELETE"):
        answer = await client.request(method, path, json=BODY if method == "POST" else None)
        tally(f"control character {encoded} in key", answer.status_code)
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"] == "cache key contains control characters"
    assert await row_count(connection) == 0


@pytest.mark.parametrize(
    "key",
    [
        "🔑:global",
        "👩‍👩‍👧‍👦 family:global",  # zero-width joiners
        "مفتاح:سري",  # right-to-left
        "עברית\u200f:global",  # with a right-to-left mark
        "e\u0301\u0327\u0308:global",  # stacked combining marks
        "\ufeffbom:global",  # a byte-order mark is a character, not a control character
        "projects/🔑/secrets/ключ/versions/1:42",
        "漢字/かな:global:bearer",
    ],
)
async def test_unicode_keys_round_trip_exactly(client, key):
    created = await client.post(url(key), json=BODY)
    tally("unicode key", created.status_code)
    assert created.status_code == 200, created.text
    assert created.json()["cache_key"] == key
    assert created.json()["credential_name"] == key.split(":", 1)[0]
    hit = await client.get(url(key))
    assert hit.status_code == 200
    assert hit.json()["cache_key"] == key and hit.json()["data"] == BODY["token_data"]
    assert (await client.delete(url(key))).status_code == 204


async def test_keys_are_not_normalised_composed_and_decomposed_forms_are_two_entries(client):
    composed, decomposed = "caf\u00e9:global", "cafe\u0301:global"
    await client.post(url(composed), json={**BODY, "token_data": {"form": "NFC"}})
    await client.post(url(decomposed), json={**BODY, "token_data": {"form": "NFD"}})
    assert (await client.get(url(composed))).json()["data"] == {"form": "NFC"}
    assert (await client.get(url(decomposed))).json()["data"] == {"form": "NFD"}


# Aimed at the table the suite runs on (its schema is the default one).
TABLE = qualified_name(keychain, load_settings({}).db_schema)
SQL_LOOKING = [
    f"'; DROP TABLE {TABLE}; --",
    "%' OR '1'='1",
    '" OR ""="',
    f"x'); DELETE FROM {TABLE} WHERE ('1'='1",
    f"1 UNION SELECT data FROM {TABLE} --",
    "%",
    "_",
    "$1",
    "\\",
    "?",
    "#fragment",
]


@pytest.mark.parametrize("key", SQL_LOOKING)
async def test_sql_looking_keys_are_plain_data_and_the_table_survives(client, connection, key):
    await client.post(url("bystander:global"), json={**BODY, "token_data": {"who": "bystander"}})
    body = {
        "token_data": {"query": key, key: key},
        "credential_type": key,
        "credential_name": key,
    }
    created = await client.post(url(key), json=body)
    tally("SQL-looking key", created.status_code)
    assert created.status_code == 200, created.text
    hit = await client.get(url(key))
    assert hit.status_code == 200
    assert hit.json()["cache_key"] == key
    assert hit.json()["credential_name"] == key and hit.json()["credential_type"] == key
    assert hit.json()["data"] == body["token_data"]
    # A filter on the name matches that name only: no wildcard, no injection.
    listed = (await client.get("/api/auth-cache", params={"credential_name": key})).json()
    assert [item["cache_key"] for item in listed["items"]] == [key]
    # The table is still there (counting its rows would fail otherwise), with both rows in it.
    assert await row_count(connection) == 2
    assert (await client.get(url("bystander:global"))).json()["data"] == {"who": "bystander"}


# --- malformed and wrong bodies: refused, nothing written -------------------------------------

FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()
NAIVE = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
PAST = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()

# (name, raw body, words the answer must contain so a person knows what to fix)
REFUSED_BODIES = [
    ("unterminated JSON", b'{"token_data": {"api_key": "' + SECRET.encode() + b'"', ["truncated"]),
    ("truncated JSON", b'{"token_data": ', ["truncated"]),
    ("JSON with a trailing comma", b'{"token_data": {}, "credential_type": "x",}', ["malformed"]),
    ("not JSON at all", SECRET.encode(), ["malformed"]),
    # Not a word about a parameter called `data` (Litestar's own): what the body must be.
    ("empty body", b"", ["body is empty", "JSON object with token_data and credential_type"]),
    (
        "a blank body",
        b" \r\n",
        ["body is empty", "JSON object with token_data and credential_type"],
    ),
    (
        "a JSON array",
        b"[]",
        ["body is an array", "JSON object with token_data and credential_type"],
    ),
    (
        "a JSON string",
        b'"' + SECRET.encode() + b'"',
        ["body is a string", "JSON object with token_data"],
    ),
    ("JSON null", b"null", ["body is null", "JSON object with token_data"]),
    ("a JSON number", b"42", ["body is a number", "JSON object with token_data"]),
    ("JSON true", b"true", ["body is a boolean", "JSON object with token_data"]),
    ("token_data missing", {"credential_type": "bearer"}, ["token_data"]),
    ("token_data a string", {**BODY, "token_data": SECRET}, ["token_data", "object"]),
    ("token_data a list", {**BODY, "token_data": [SECRET]}, ["token_data", "object"]),
    ("token_data null", {**BODY, "token_data": None}, ["token_data"]),
    ("credential_type missing", {"token_data": {"api_key": SECRET}}, ["credential_type"]),
    ("credential_type empty", {**BODY, "credential_type": ""}, ["credential_type"]),
    (
        "credential_type too long",
        {**BODY, "credential_type": "t" * 129},
        ["credential_type", "128"],
    ),
    ("credential_type a number", {**BODY, "credential_type": 7}, ["credential_type", "str"]),
    (
        "credential_name too long",
        {**BODY, "credential_name": "n" * 513},
        ["credential_name", "512"],
    ),
    ("unknown field", {**BODY, "ttl": 60}, ["unknown field", "ttl"]),
    ("unknown enum cache_type", {**BODY, "cache_type": "password"}, ["cache_type"]),
    ("unknown enum scope_type", {**BODY, "scope_type": "world"}, ["scope_type"]),
    ("execution_id 2^63", {**BODY, "execution_id": 2**63}, ["execution_id"]),
    ("execution_id 2^64", {**BODY, "execution_id": 2**64}, ["execution_id"]),
    ("execution_id 10^30", {**BODY, "execution_id": 10**30}, ["execution_id"]),
    ("execution_id negative", {**BODY, "execution_id": -1}, ["execution_id", ">= 0"]),
    ("execution_id a float", {**BODY, "execution_id": 1.5}, ["execution_id"]),
    ("parent_execution_id 2^63", {**BODY, "parent_execution_id": 2**63}, ["parent_execution_id"]),
    ("execution scope without id", {**BODY, "scope_type": "execution"}, ["execution_id"]),
    ("ttl_seconds zero", {**BODY, "ttl_seconds": 0}, ["ttl_seconds", "positive"]),
    ("ttl_seconds negative", {**BODY, "ttl_seconds": -60}, ["ttl_seconds", "positive"]),
    ("ttl_seconds '0'", {**BODY, "ttl_seconds": "0"}, ["ttl_seconds", "positive"]),
    ("ttl_seconds '-60'", {**BODY, "ttl_seconds": "-60"}, ["ttl_seconds", "positive"]),
    (
        "ttl_seconds over the maximum",
        {**BODY, "ttl_seconds": 30 * 86400 + 1},
        ["ttl_seconds", "maximum"],
    ),
    ("ttl_seconds huge", {**BODY, "ttl_seconds": 2**63}, ["ttl_seconds"]),
    ("ttl_seconds huge string", {**BODY, "ttl_seconds": "9" * 40}, ["ttl_seconds", "whole number"]),
    ("ttl_seconds a float", {**BODY, "ttl_seconds": 60.5}, ["ttl_seconds"]),
    (
        "ttl_seconds a float string",
        {**BODY, "ttl_seconds": "60.5"},
        ["ttl_seconds", "whole number"],
    ),
    (
        "ttl_seconds non-numeric",
        {**BODY, "ttl_seconds": "an hour"},
        ["ttl_seconds", "whole number"],
    ),
    ("ttl_seconds empty string", {**BODY, "ttl_seconds": ""}, ["ttl_seconds", "whole number"]),
    ("ttl_seconds exponent", {**BODY, "ttl_seconds": "1e3"}, ["ttl_seconds", "whole number"]),
    ("ttl_seconds a boolean", {**BODY, "ttl_seconds": True}, ["ttl_seconds"]),
    ("ttl_seconds an object", {**BODY, "ttl_seconds": {"s": 60}}, ["ttl_seconds"]),
    ("expires_at naive", {**BODY, "expires_at": NAIVE}, ["expires_at", "timezone"]),
    ("expires_at in the past", {**BODY, "expires_at": PAST}, ["expires_at", "past"]),
    ("expires_at not a date", {**BODY, "expires_at": "tomorrow"}, ["expires_at"]),
    (
        "expires_at past the maximum",
        {**BODY, "expires_at": "2999-01-01T00:00:00Z"},
        ["expires_at", "maximum"],
    ),
    (
        "expires_at with a bad ttl",
        {**BODY, "expires_at": FUTURE, "ttl_seconds": "soon"},
        ["ttl_seconds"],
    ),
]


@pytest.mark.parametrize(
    ("raw", "words"),
    [case[1:] for case in REFUSED_BODIES],
    ids=[case[0] for case in REFUSED_BODIES],
)
async def test_a_bad_body_is_400_saying_what_to_fix_and_nothing_is_written(
    client, connection, raw, words
):
    key = "refused:global"
    if isinstance(raw, bytes):
        answer = await client.post(
            url(key), content=raw, headers={"content-type": "application/json"}
        )
    else:
        answer = await client.post(url(key), json=raw)
    tally(f"bad body ({len(REFUSED_BODIES)} kinds)", answer.status_code)
    assert answer.status_code == 400, answer.text
    said = problem(answer)
    for word in words:
        assert word in said, f"{word!r} not in {said!r}"
    assert SECRET not in answer.text
    assert (await client.get(url(key))).status_code == 404
    assert await row_count(connection) == 0


@pytest.mark.parametrize(
    ("raw", "words"),
    [case[1:] for case in REFUSED_BODIES],
    ids=[case[0] for case in REFUSED_BODIES],
)
async def test_a_refused_replace_keeps_the_previous_value(client, raw, words):
    key = "kept:global"
    first = await client.post(
        url(key), json={**BODY, "token_data": {"v": "previous"}, "ttl_seconds": 600}
    )
    assert first.status_code == 200
    if isinstance(raw, bytes):
        answer = await client.post(
            url(key), content=raw, headers={"content-type": "application/json"}
        )
    else:
        answer = await client.post(url(key), json=raw)
    tally("refused replace", f"{answer.status_code}, previous value kept")
    assert answer.status_code == 400
    hit = await client.get(url(key))
    assert hit.status_code == 200
    assert hit.json()["data"] == {"v": "previous"}
    assert hit.json()["ttl_seconds"] == 600
    assert hit.json()["expires_at"] == first.json()["expires_at"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/executions/-1/auth-cache"),
        ("DELETE", f"/api/executions/{2**63}/auth-cache"),
        ("GET", f"/api/auth-cache?execution_id={2**63}"),
        ("GET", "/api/auth-cache?execution_id=-1"),
        ("GET", "/api/auth-cache?limit=0"),
        ("GET", "/api/auth-cache?limit=1001"),
        ("GET", "/api/auth-cache?offset=-1"),
        ("GET", "/api/auth-cache?scope_type=world"),
        ("GET", "/api/auth-cache?include_expired=maybe"),
    ],
)
async def test_bad_query_and_path_numbers_are_400_naming_the_parameter(client, method, path):
    answer = await client.request(method, path)
    tally("bad query/path parameter", answer.status_code)
    assert answer.status_code == 400
    name = path.split("?")[1].split("=")[0] if "?" in path else "execution_id"
    assert name in problem(answer)


@pytest.mark.parametrize("raw", [b"", b"[]", b"[{}]"])
async def test_an_execution_token_request_that_is_no_object_says_what_it_must_be(client, raw):
    answer = await client.post(
        "/api/execution-tokens", content=raw, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["detail"].endswith("; send a JSON object with execution_id")
