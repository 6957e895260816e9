"""Secret Manager event notifications, pushed as Pub/Sub pushes them, signed with the test's own
RSA key whose JWKS the test serves over real HTTP on 127.0.0.1 (tests/pubsub.py): no internet,
no mocks."""

from __future__ import annotations

import base64
import json
import logging
import statistics
import time

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa

from app.errors import ConfigurationError
from tests.bodies import entry_body
from tests.conftest import asgi_client, free_port
from tests.pubsub import AUDIENCE, PATH, PUSHER, claims, pubsub_settings, push_body, signed
from tests.server.replicas import read_into_memory, replica, until

PROJECT = "123456789012"  # Secret Manager names projects by number in its events
SECRET = f"projects/{PROJECT}/secrets/openai-api-key"
OTHER = f"projects/{PROJECT}/secrets/crm-api-key"
REGIONAL = f"projects/{PROJECT}/locations/europe-west1/secrets/openai-api-key"
BY_PROJECT_ID = "projects/my-project/secrets/openai-api-key"
SECRET_VALUE = "sk-event-test-secret"

# cache key -> execution id (None: global); the credential name is the key's part before ':'.
ENTRIES = {
    f"{SECRET}/versions/1:42": 42,
    f"{SECRET}/versions/1:global": None,
    f"{SECRET}/versions/2:42": 42,
    f"{SECRET}/versions/latest:42": 42,
    f"{SECRET}/versions/latest:global": None,
    f"{OTHER}/versions/1:42": 42,
    f"{OTHER}/versions/latest:global": None,
    f"{REGIONAL}/versions/1:42": 42,
    f"{BY_PROJECT_ID}/versions/1:42": 42,
}
SECRET_LATEST = {f"{SECRET}/versions/latest:42", f"{SECRET}/versions/latest:global"}
SECRET_V1 = {f"{SECRET}/versions/1:42", f"{SECRET}/versions/1:global"}

# (event type, the secret or version it names, the entries it must drop on every replica)
EVENTS = [
    ("SECRET_VERSION_DISABLE", f"{SECRET}/versions/1", SECRET_V1 | SECRET_LATEST),
    ("SECRET_VERSION_DESTROY", f"{SECRET}/versions/1", SECRET_V1 | SECRET_LATEST),
    (
        "SECRET_VERSION_DESTROY_SCHEDULED",
        f"{SECRET}/versions/2",
        {f"{SECRET}/versions/2:42"} | SECRET_LATEST,
    ),
    ("SECRET_VERSION_ADD", f"{SECRET}/versions/3", SECRET_LATEST),
    ("SECRET_VERSION_ENABLE", f"{SECRET}/versions/2", SECRET_LATEST),
    ("SECRET_ROTATE", SECRET, SECRET_LATEST),
    ("SECRET_DELETE", SECRET, SECRET_V1 | SECRET_LATEST | {f"{SECRET}/versions/2:42"}),
    ("SECRET_VERSION_DISABLE", f"{REGIONAL}/versions/1", {f"{REGIONAL}/versions/1:42"}),
    ("SECRET_CREATE", SECRET, set()),
    ("SECRET_UPDATE", SECRET, set()),
    ("TOPIC_CONFIGURED", None, set()),
]


@pytest.fixture(scope="session")
def forger_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def secret_entry(cache_key: str, execution_id: int | None) -> dict[str, object]:
    return entry_body(
        {"value": SECRET_VALUE},
        credential_type="secret_manager",
        credential_name=cache_key.split(":", 1)[0],
        execution_id=execution_id,
        scope_type="execution" if execution_id is not None else "global",
    )


def audit_events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "keychain.audit" and r.audit_action == "secretManagerEvent"
    ]


# --- three replicas holding entries in memory, and every event type ---


async def test_each_event_drops_what_it_makes_stale_on_every_replica_and_nothing_else(
    test_settings, own_database, jwks_url, signing_key, caplog
):
    caplog.set_level(logging.INFO, logger="keychain.audit")
    settings = pubsub_settings(jwks_url)
    delays: list[float] = []
    async with (
        replica(test_settings, own_database, **settings) as a,
        replica(test_settings, own_database, **settings) as b,
        replica(test_settings, own_database, **settings) as c,
    ):
        replicas = (a, b, c)
        for event_type, name, dropped in EVENTS:
            for key, execution_id in ENTRIES.items():
                assert (
                    await a.client.post(
                        f"/api/auth-cache/{key}", json=secret_entry(key, execution_id)
                    )
                ).status_code in (200, 201)
            for server in replicas:
                for key in ENTRIES:
                    await read_into_memory(server, key)

            pushed = time.monotonic()
            answer = await b.client.post(
                PATH, json=push_body(event_type, name), headers=signed(signing_key)
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == ("dropped" if dropped else "ignored"), (
                event_type,
                answer.json(),
            )
            assert answer.json()["dropped"] == len(dropped), event_type

            async def forgotten_everywhere(keys=dropped) -> bool:
                return all(
                    server.process.tier.get(key) is None for server in replicas for key in keys
                )

            await until(forgotten_everywhere)
            if dropped:
                delays.append(time.monotonic() - pushed)
            for server in replicas:
                for key in ENTRIES:
                    answer = await server.client.get(f"/api/auth-cache/{key}")
                    if key in dropped:
                        assert answer.status_code == 404, (event_type, key)
                    else:
                        # Still served, and from memory: the event did not touch it.
                        assert server.process.tier.get(key) is not None, (event_type, key)
                        assert answer.status_code == 200 and answer.json()["data"] == {
                            "value": SECRET_VALUE
                        }

    events = [(r.event_type, r.result, r.outcome, r.status, r.pusher) for r in audit_events(caplog)]
    assert events == [
        (event_type, "dropped" if dropped else "ignored", "ok", 200, PUSHER)
        for event_type, _, dropped in EVENTS
    ]
    # The closing note's figure: push sent -> the last of three replicas no longer holds the entries.
    delays.sort()
    p50, p99 = (
        statistics.median(delays),
        delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))],
    )
    print(
        f"\npush -> dropped on all 3 replicas over {len(delays)} events: "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    assert p99 < 1.0


# --- one app on the test's transaction: refusals, bad input, repeats ---


@pytest_asyncio.fixture(loop_scope="session")
async def events(make_app, jwks_url):
    async with asgi_client(
        make_app(**pubsub_settings(jwks_url)), client=("10.9.8.7", 4444)
    ) as client:
        for key in (f"{SECRET}/versions/1:global", f"{SECRET}/versions/latest:global"):
            assert (
                await client.post(f"/api/auth-cache/{key}", json=secret_entry(key, None))
            ).status_code == 200
        yield client


async def still_cached(client) -> bool:
    answers = [
        await client.get(f"/api/auth-cache/{SECRET}/versions/{v}:global") for v in ("1", "latest")
    ]
    return all(answer.status_code == 200 for answer in answers)


FORGERIES = {
    "no token": lambda key, forger: {},
    "not a bearer token": lambda key, forger: {
        "Authorization": "Basic c2VjcmV0LWV2ZW50czpwYXNzd29yZA=="
    },
    "signed by another key": lambda key, forger: signed(forger),
    "a key id the JWKS does not have": lambda key, forger: signed(forger, kid="made-up"),
    "unsigned (alg none)": lambda key, forger: {
        "Authorization": "Bearer " + jwt.encode(claims(), None, algorithm="none")
    },
    "another audience": lambda key, forger: signed(key, aud="https://elsewhere.example.com/push"),
    "expired": lambda key, forger: signed(
        key, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600
    ),
    "not Google's issuer": lambda key, forger: signed(key, iss="https://issuer.example.com"),
    "another service account": lambda key, forger: signed(
        key, email="someone@other-project.iam.gserviceaccount.com"
    ),
    "an unverified email": lambda key, forger: signed(key, email_verified=False),
    "no email at all": lambda key, forger: signed(key, email=None),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_a_forged_push_is_refused_audited_and_drops_nothing(
    events, signing_key, forger_key, forgery, caplog
):
    caplog.set_level(logging.INFO)
    headers = FORGERIES[forgery](signing_key, forger_key)
    answer = await events.post(PATH, json=push_body("SECRET_DELETE", SECRET), headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert await still_cached(events)
    [event] = audit_events(caplog)
    assert (event.outcome, event.status, event.result, event.client) == (
        "denied",
        401,
        "refused",
        "10.9.8.7",
    )
    assert event.reason == answer.json()["detail"]
    token = headers.get("Authorization", "").partition(" ")[2]
    for secret_part in (token, token.split(".")[-1]):
        assert not secret_part or secret_part not in caplog.text


async def test_a_push_is_answered_only_once_its_drop_has_committed_and_a_repeat_is_harmless(
    events, signing_key
):
    body = push_body("SECRET_VERSION_DISABLE", f"{SECRET}/versions/1", message_id="4242")
    first = await events.post(PATH, json=body, headers=signed(signing_key))
    assert (first.status_code, first.json()["dropped"]) == (200, 2)
    assert (await events.get(f"/api/auth-cache/{SECRET}/versions/1:global")).status_code == 404
    # Pub/Sub delivers at least once: the same message again drops nothing more, and is acknowledged.
    again = await events.post(PATH, json=body, headers=signed(signing_key))
    assert (again.status_code, again.json()["result"], again.json()["dropped"]) == (
        200,
        "dropped",
        0,
    )


def raw_push(attributes: dict[str, str], data: str | None = None) -> dict:
    message: dict[str, object] = {
        "attributes": attributes,
        "messageId": "17",
        "publishTime": "2026-12-07T17:00:00Z",
    }
    if data is not None:
        message["data"] = data
    return {
        "message": message,
        "subscription": "projects/my-project/subscriptions/keychain-secret-events",
    }


def as_data(resource: dict) -> str:
    return base64.b64encode(json.dumps(resource).encode()).decode()


def _with_data(data: str) -> dict:
    body = push_body("SECRET_VERSION_DISABLE", f"{SECRET}/versions/1")
    body["message"]["data"] = data
    return body


def _with_attributes(**attributes: str) -> dict:
    body = push_body("SECRET_VERSION_DISABLE", f"{SECRET}/versions/1")
    body["message"]["attributes"].update(attributes)
    return body


# Pub/Sub never sends these: whoever did gets a 4xx saying why.
NOT_A_PUSH = {
    "not JSON": (b"eventType=SECRET_DELETE", 400, "not a Pub/Sub push body: not JSON"),
    "a JSON array": (b"[]", 400, "not a Pub/Sub push body: Expected `object`, got `array`"),
    "no message": (
        b'{"subscription": "s"}',
        400,
        "not a Pub/Sub push body: Object missing required field `message`",
    ),
    "a message that is no object": (
        b'{"message": "SECRET_DELETE"}',
        400,
        "Expected `object`, got `str` - at `$.message`",
    ),
    "attributes that are not strings": (
        b'{"message": {"attributes": {"eventType": 7}}}',
        400,
        "Expected `str`, got `int` - at `$.message.attributes[...]`",
    ),
    "an unwrapped payload (--push-no-wrapper)": (
        json.dumps({"name": f"{SECRET}/versions/1", "state": "DISABLED"}).encode(),
        400,
        "missing required field `message`",
    ),
    "a body over 128 KiB": (
        json.dumps({**push_body("SECRET_DELETE", SECRET), "padding": "x" * 140_000}).encode(),
        413,
        "request body is larger than 131072 bytes",
    ),
}

# Pub/Sub-shaped, but nothing to act on: acknowledged (a redelivery would be no better), never guessed at.
NOTHING_TO_ACT_ON = {
    "data that is not base64": (_with_data("not base64!"), "data is not base64"),
    "data that is not JSON": (
        _with_data(base64.b64encode(b"\x00\x01").decode()),
        "data is not a Secret or SecretVersion as JSON",
    ),
    "data naming another version": (
        _with_data(as_data({"name": f"{SECRET}/versions/2"})),
        "the attributes and the data name different versions",
    ),
    "a version name that is no Secret Manager path": (
        raw_push({"eventType": "SECRET_VERSION_DISABLE", "versionId": "db/password"}),
        "versionId is not a Secret Manager version name (projects/P/secrets/S/versions/N)",
    ),
    "a path that climbs": (
        raw_push({"eventType": "SECRET_DELETE", "secretId": f"{SECRET}/../crm-api-key"}),
        "secretId is not a Secret Manager secret name (projects/P/secrets/S)",
    ),
    "a version of another secret": (
        _with_attributes(secretId=OTHER),
        "secretId and versionId name different secrets",
    ),
    "no name at all": (raw_push({"eventType": "SECRET_ROTATE"}), "the message names no secret"),
    "an unknown event type": (
        _with_attributes(eventType="SECRET_VERSION_TELEPORT"),
        "unknown event type 'SECRET_VERSION_TELEPORT'",
    ),
    "no event type": (
        raw_push({"secretId": SECRET}),
        "no eventType attribute: not a Secret Manager event",
    ),
}


@pytest.mark.parametrize("case", list(NOT_A_PUSH))
async def test_what_is_not_a_pubsub_push_is_a_clear_4xx(events, signing_key, case, caplog):
    caplog.set_level(logging.INFO, logger="keychain.audit")
    content, status, detail = NOT_A_PUSH[case]
    answer = await events.post(
        PATH, content=content, headers={**signed(signing_key), "Content-Type": "application/json"}
    )
    assert answer.status_code == status, answer.text
    assert detail in answer.json()["detail"]
    assert await still_cached(events)
    [event] = audit_events(caplog)
    assert (event.outcome, event.status, event.result, event.pusher) == (
        "failed",
        status,
        "refused",
        PUSHER,
    )


@pytest.mark.parametrize("case", list(NOTHING_TO_ACT_ON))
async def test_a_push_with_nothing_to_act_on_is_acknowledged_as_ignored(
    events, signing_key, case, caplog
):
    caplog.set_level(logging.INFO, logger="keychain.audit")
    body, reason = NOTHING_TO_ACT_ON[case]
    answer = await events.post(PATH, json=body, headers=signed(signing_key))
    assert (answer.status_code, answer.json()) == (
        200,
        {"result": "ignored", "detail": reason, "dropped": 0},
    )
    assert await still_cached(events)
    [event] = audit_events(caplog)
    assert (event.outcome, event.result, event.reason) == ("ok", "ignored", reason)


async def test_the_endpoint_is_off_without_an_audience(make_app, signing_key, caplog):
    caplog.set_level(logging.INFO, logger="keychain.audit")
    async with asgi_client(make_app()) as client:
        answer = await client.post(
            PATH, json=push_body("SECRET_DELETE", SECRET), headers=signed(signing_key)
        )
    assert answer.status_code == 404
    assert "KEYCHAIN_PUBSUB_AUDIENCE" in answer.json()["detail"]
    [event] = audit_events(caplog)
    assert (event.outcome, event.status, event.result, event.reason) == (
        "failed",
        404,
        "refused",
        "not enabled",
    )


async def test_unreachable_keys_are_a_503_pubsub_retries_not_a_refusal(make_app, signing_key):
    app = make_app(**pubsub_settings(f"http://127.0.0.1:{free_port()}/certs"))
    async with asgi_client(app) as client:
        answer = await client.post(
            PATH, json=push_body("SECRET_DELETE", SECRET), headers=signed(signing_key)
        )
    assert answer.status_code == 503
    assert answer.headers["retry-after"]
    assert "KEYCHAIN_PUBSUB_JWKS_URL" in answer.json()["detail"]


def test_without_a_service_account_start_up_warns_and_a_bad_jwks_url_stops_it(
    make_app, jwks_url, caplog
):
    caplog.set_level(logging.WARNING)
    make_app(pubsub_audience=AUDIENCE, pubsub_jwks_url=jwks_url)
    assert "accept a token from ANY Google service account" in caplog.text
    with pytest.raises(ConfigurationError, match="KEYCHAIN_PUBSUB_JWKS_URL"):
        make_app(**{**pubsub_settings(jwks_url), "pubsub_jwks_url": "file:///etc/passwd"})
