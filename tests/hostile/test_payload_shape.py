"""token_data is capped in depth, items and bytes, and the caps hold before decoding expands it.

Before the caps, a body of a few thousand "[" raised RecursionError (a 500), and a 1 MiB body of
`[{},{},...]` inflated to ~27 MB of objects in the server (8 at once: 302 MB, past the chart's
memory limit).
"""

from __future__ import annotations

import resource

import pytest
from hostile_support import tally

JSON = {"content-type": "application/json"}


def nested_body(depth: int) -> bytes:
    return (
        b'{"token_data": {"deep": '
        + b"[" * depth
        + b"]" * depth
        + b'}, "credential_type": "bearer"}'
    )


async def test_reasonably_nested_token_data_is_stored_and_read_back(client):
    answer = await client.post("/api/auth-cache/deep:global", content=nested_body(16), headers=JSON)
    assert answer.status_code == 200
    hit = await client.get("/api/auth-cache/deep:global")
    assert hit.status_code == 200
    depth, value = 0, hit.json()["data"]["deep"]
    while value:
        depth, value = depth + 1, value[0]
    assert depth == 15  # the innermost [] is empty


@pytest.mark.parametrize("depth", [32, 5_000])
async def test_token_data_deeper_than_the_cap_is_400_naming_the_setting(client, depth):
    # {"deep": [...]} nests one level more than its arrays: 32 arrays are 33 levels.
    answer = await client.post(
        "/api/auth-cache/deep:global", content=nested_body(depth), headers=JSON
    )
    tally("deeply nested token_data", answer.status_code)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "status_code": 400,
        "detail": f"token_data nests {depth + 1} levels deep; the limit is 32 (KEYCHAIN_MAX_TOKEN_DATA_DEPTH)",
    }
    assert (await client.get("/api/auth-cache/deep:global")).status_code == 404


async def test_brackets_inside_strings_do_not_count(client):
    body = {"token_data": {"pem": "[" * 5_000 + "{,,,}" * 3_000}, "credential_type": "bearer"}
    assert (await client.post("/api/auth-cache/pem:global", json=body)).status_code == 200


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_a_megabyte_of_empty_objects_is_refused_before_it_is_decoded(client):
    flood = (
        b'{"token_data": {"x": ['
        + b",".join([b"{}"] * 349_000)
        + b']}, "credential_type": "bearer"}'
    )
    assert len(flood) < 1024 * 1024  # under the body limit: only the item cap stops it
    before = _max_rss_mib()
    for _ in range(8):
        answer = await client.post("/api/auth-cache/flood:global", content=flood, headers=JSON)
        tally("a megabyte of {}", answer.status_code)
        assert answer.status_code == 400
        assert "KEYCHAIN_MAX_TOKEN_DATA_ITEMS" in answer.json()["detail"]
    # Decoded, each body would be ~27 MB of objects; refused on its bytes, the peak barely moves.
    assert _max_rss_mib() - before < 50


async def test_token_data_over_the_byte_cap_is_400_and_nothing_is_stored(client):
    body = {"token_data": {"blob": "x" * (64 * 1024)}, "credential_type": "bearer"}
    answer = await client.post("/api/auth-cache/big:global", json=body)
    assert answer.status_code == 400
    assert "the limit is 65536 (KEYCHAIN_MAX_TOKEN_DATA_BYTES)" in answer.json()["detail"]
    assert (await client.get("/api/auth-cache/big:global")).status_code == 404


async def test_the_caps_are_settings(make_app):
    from tests.conftest import asgi_client

    strict = make_app(max_token_data_depth=2, max_token_data_items=5)
    async with asgi_client(strict) as client:
        ok = await client.post("/api/auth-cache/s:global", content=nested_body(1), headers=JSON)
        assert ok.status_code == 200
        too_deep = await client.post(
            "/api/auth-cache/s:global", content=nested_body(2), headers=JSON
        )
        assert "the limit is 2" in too_deep.json()["detail"]
        many = {"token_data": {"a": [1, 2, 3, 4, 5, 6]}, "credential_type": "bearer"}
        assert (await client.post("/api/auth-cache/s:global", json=many)).status_code == 400
