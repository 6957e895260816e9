"""token_data nested deeper than the JSON decoder can recurse is a 400, not a 500.

msgspec decodes nested arrays and objects recursively; before the fix a body of a few
thousand "[" (well under the 1 MiB body limit) raised RecursionError, answered as a 500.
"""

from __future__ import annotations

import pytest
from hostile_support import tally


def nested_body(depth: int) -> bytes:
    return b'{"token_data": {"deep": ' + b"[" * depth + b"]" * depth + b'}, "credential_type": "bearer"}'


async def test_reasonably_nested_token_data_is_stored_and_read_back(client):
    answer = await client.post(
        "/api/auth-cache/deep:global", content=nested_body(64), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 201
    hit = await client.get("/api/auth-cache/deep:global")
    assert hit.status_code == 200
    depth, value = 0, hit.json()["data"]["deep"]
    while value:
        depth, value = depth + 1, value[0]
    assert depth == 63  # the innermost [] is empty


@pytest.mark.parametrize("depth", [5_000, 400_000])
async def test_absurdly_nested_token_data_is_400_and_nothing_is_stored(client, depth):
    answer = await client.post(
        "/api/auth-cache/deep:global", content=nested_body(depth), headers={"content-type": "application/json"}
    )
    tally("deeply nested token_data", answer.status_code)
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "status_code": 400,
        "detail": "request body nests JSON arrays or objects too deeply",
    }
    assert (await client.get("/api/auth-cache/deep:global")).status_code == 404
