"""The encryption envelope under hypothesis: every payload round-trips, every tampering fails
closed with UnreadableEntry (never another exception), and through HTTP a tampered row is a
409 that says what is wrong, never a 500 and never the payload."""

from __future__ import annotations

import base64
import logging
import re

import msgspec
import pytest
from hostile_support import tally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import LargeBinary, literal_column, select, update

from app.crypto import KeyRing
from app.db.tables import keychain
from app.errors import UnreadableEntry

K1 = base64.b64encode(bytes(range(32))).decode()
K2 = base64.b64encode(bytes(range(100, 132))).decode()
# Two ids one bit apart ('1' ^ '3' == 0x02), so a flipped key-id byte can name the other key.
RING = KeyRing.parse(f"key-1:{K1},key-3:{K2}")
OTHER_RING = KeyRing.parse(f"key-1:{K2}")  # same id, different key material

CLEAR_REASONS = re.compile(
    r"stored entry (has an unknown envelope format|is truncated|has a malformed key id"
    r"|failed its integrity check|is sealed by key '[A-Za-z0-9_.-]{1,64}', which is not configured)"
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=25,
)
payloads = st.dictionaries(st.text(), json_values, max_size=6)  # token_data is an object
cache_keys = st.text(min_size=1, max_size=512)

envelope_settings = settings(max_examples=200, deadline=None, database=None)


def sealed(payload: dict, cache_key: str) -> bytes:
    return RING.seal(msgspec.json.encode(payload), cache_key.encode()).envelope


def fails_closed(envelope: bytes, cache_key: str, ring: KeyRing = RING) -> str:
    with pytest.raises(UnreadableEntry) as caught:  # any other exception type fails the test
        ring.open(envelope, cache_key.encode())
    message = str(caught.value)
    assert CLEAR_REASONS.fullmatch(message), message
    return message


@envelope_settings
@given(payload=payloads, cache_key=cache_keys)
def test_any_json_payload_round_trips_under_any_key(payload, cache_key):
    tally("envelope: round trip", "ok")
    envelope = sealed(payload, cache_key)
    assert envelope[0] == 1 and envelope[2 : 2 + envelope[1]] == b"key-1"
    assert msgspec.json.decode(RING.open(envelope, cache_key.encode())) == payload


@envelope_settings
@given(payload=payloads, cache_key=cache_keys, data=st.data())
def test_any_flipped_byte_fails_closed(payload, cache_key, data):
    envelope = bytearray(sealed(payload, cache_key))
    position = data.draw(st.integers(0, len(envelope) - 1), label="position")
    envelope[position] ^= data.draw(st.integers(1, 255), label="mask")
    tally("envelope: flipped byte", "UnreadableEntry")
    fails_closed(bytes(envelope), cache_key)


@envelope_settings
@given(payload=payloads, cache_key=cache_keys, data=st.data())
def test_any_truncation_fails_closed(payload, cache_key, data):
    envelope = sealed(payload, cache_key)
    cut = data.draw(st.integers(0, len(envelope) - 1), label="cut")
    tally("envelope: truncated", "UnreadableEntry")
    fails_closed(envelope[:cut], cache_key)


@envelope_settings
@given(payload=payloads, cache_key=cache_keys, tail=st.binary(min_size=1, max_size=64))
def test_any_appended_bytes_fail_closed(payload, cache_key, tail):
    tally("envelope: appended bytes", "UnreadableEntry")
    fails_closed(sealed(payload, cache_key) + tail, cache_key)


@envelope_settings
@given(payload=payloads, cache_key=cache_keys, other_key=cache_keys)
def test_another_cache_key_as_associated_data_fails_closed(payload, cache_key, other_key):
    if other_key == cache_key:
        other_key += "x"
    tally("envelope: wrong associated data", "UnreadableEntry")
    assert (
        fails_closed(sealed(payload, cache_key), other_key)
        == "stored entry failed its integrity check"
    )


@envelope_settings
@given(
    payload=payloads,
    cache_key=cache_keys,
    key_id=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=64),
)
def test_a_wrong_key_id_or_wrong_key_fails_closed(payload, cache_key, key_id):
    envelope = sealed(payload, cache_key)
    tally("envelope: wrong key id / key", "UnreadableEntry")
    # Same id, other key material: the integrity check fails.
    assert (
        fails_closed(envelope, cache_key, OTHER_RING) == "stored entry failed its integrity check"
    )
    # The envelope relabelled with another id: unknown ids are named, known ones fail the check.
    relabelled = bytes([1, len(key_id)]) + key_id.encode() + envelope[2 + envelope[1] :]
    message = fails_closed(relabelled, cache_key)
    if key_id in RING.key_ids and key_id != "key-1":
        assert message == "stored entry failed its integrity check"
    elif key_id != "key-1":
        assert message == f"stored entry is sealed by key {key_id!r}, which is not configured"


@envelope_settings
@given(garbage=st.binary(max_size=200), cache_key=cache_keys)
def test_arbitrary_bytes_fail_closed(garbage, cache_key):
    tally("envelope: arbitrary bytes", "UnreadableEntry")
    fails_closed(garbage, cache_key)


def test_a_damaged_key_id_length_byte_does_not_echo_nonce_or_ciphertext():
    envelope = bytearray(sealed({"api_key": "sk-" + "x" * 300}, "k"))
    envelope[1] = 200  # the id now seems to run on into the nonce and ciphertext
    assert fails_closed(bytes(envelope), "k") == "stored entry has a malformed key id"


# --- through HTTP ----------------------------------------------------------------------------

SECRET = "sk-tamper-victim-8d2b61"
BODY = {"token_data": {"api_key": SECRET}, "credential_type": "bearer"}
KEY = "victim:global"

TAMPERING = {
    "flip a ciphertext byte": "set_byte(data, length(data) - 1, get_byte(data, length(data) - 1) # 1)",
    "flip the version byte": "set_byte(data, 0, 9)",
    "flip a key id byte": "set_byte(data, 2, get_byte(data, 2) # 32)",
    "truncate": "substring(data from 1 for 20)",
    "append bytes": "data || '\\x00ff'::bytea",
    "empty": "''::bytea",
    "plaintext instead of ciphertext": f"convert_to('{{\"api_key\": \"{SECRET}\"}}', 'UTF8')",
}


async def tamper(connection, expression: str, key: str = KEY) -> None:
    await connection.execute(
        update(keychain)
        .where(keychain.c.cache_key == key)
        .values(data=literal_column(expression, LargeBinary))
    )


@pytest.mark.parametrize("expression", TAMPERING.values(), ids=TAMPERING.keys())
async def test_a_tampered_row_is_409_with_a_clear_detail_and_no_payload(
    client, connection, caplog, expression
):
    caplog.set_level(logging.WARNING, logger="app.keychain.service")
    await client.post(f"/api/auth-cache/{KEY}", json=BODY)
    await client.post(
        "/api/auth-cache/bystander:global", json={**BODY, "token_data": {"v": "fine"}}
    )
    await tamper(connection, expression)

    answer = await client.get(f"/api/auth-cache/{KEY}")
    tally("HTTP: tampered row", answer.status_code)
    assert answer.status_code == 409
    assert answer.json().keys() == {"status_code", "detail"}
    assert CLEAR_REASONS.fullmatch(answer.json()["detail"]), answer.json()
    assert SECRET not in answer.text and "api_key" not in answer.text
    # Reported for operators, without the payload.
    [warning] = [r for r in caplog.records if r.getMessage() == "unreadable entry"]
    assert warning.cache_key == KEY and warning.reason == answer.json()["detail"]
    assert SECRET not in caplog.text

    # The failed read did not count as a hit, the row stays for inspection, the rest still work.
    row = (
        await connection.execute(select(keychain.c.access_count).where(keychain.c.cache_key == KEY))
    ).one()
    assert row.access_count == 0
    assert (await client.get("/api/auth-cache/bystander:global")).json()["data"] == {"v": "fine"}
    # Writing the entry again heals it.
    assert (await client.post(f"/api/auth-cache/{KEY}", json=BODY)).status_code == 200
    assert (await client.get(f"/api/auth-cache/{KEY}")).json()["data"] == BODY["token_data"]


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_any_flipped_byte_in_the_table_is_a_409_never_a_500(client, connection, data):
    if (await client.get(f"/api/auth-cache/{KEY}")).status_code == 404:
        await client.post(f"/api/auth-cache/{KEY}", json=BODY)
    original = await connection.scalar(select(keychain.c.data).where(keychain.c.cache_key == KEY))
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    await tamper(connection, f"set_byte(data, {position}, get_byte(data, {position}) # {mask})")
    try:
        answer = await client.get(f"/api/auth-cache/{KEY}")
        tally("HTTP: flipped byte in the table (hypothesis)", answer.status_code)
        assert answer.status_code == 409, answer.text
        assert CLEAR_REASONS.fullmatch(answer.json()["detail"])
        assert SECRET not in answer.text
    finally:
        await connection.execute(
            update(keychain).where(keychain.c.cache_key == KEY).values(data=original)
        )
