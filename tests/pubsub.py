"""Secret Manager events as Pub/Sub pushes them, signed with a test's own RSA key, whose JWKS
the test serves over real HTTP on 127.0.0.1: no internet, no mocks. Shared by the server's
event tests and workerlib's (the `signing_key` and `jwks_url` fixtures are in tests/conftest.py)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.json_http import serving_json

AUDIENCE = "https://keychain.example.com/api/events/secret-manager"
PUSHER = "secret-events@my-project.iam.gserviceaccount.com"
KID = "test-key-1"
PATH = "/api/events/secret-manager"


@contextmanager
def serving_jwks(public_key: rsa.RSAPublicKey) -> Iterator[str]:
    """Google's certs endpoint, as far as the server can tell: a JWKS over real HTTP."""
    jwk = {
        **RSAAlgorithm.to_jwk(public_key, as_dict=True),
        "kid": KID,
        "use": "sig",
        "alg": "RS256",
    }
    with serving_json(lambda *_: (200, {"keys": [jwk]})) as url:
        yield f"{url}/oauth2/v3/certs"


def claims(**overrides: object) -> dict[str, object]:
    """What Pub/Sub's push token carries (iss, aud, the service account's email)."""
    now = int(time.time())
    return {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "104857600000000000000",
        "sub": "104857600000000000000",
        "email": PUSHER,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        **overrides,
    }


def signed(key: rsa.RSAPrivateKey, kid: str = KID, **overrides: object) -> dict[str, str]:
    token = jwt.encode(claims(**overrides), key, algorithm="RS256", headers={"kid": kid})
    return {"Authorization": f"Bearer {token}"}


def push_body(
    event_type: str, name: str | None, message_id: str | None = None, **attributes: str
) -> dict:
    """A push as Pub/Sub sends it for a message Secret Manager published."""
    message_id = message_id or str(uuid.uuid4().int)[:16]
    attrs = {"eventType": event_type, **attributes}
    message: dict[str, object] = {
        "attributes": attrs,
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": "2026-12-07T17:00:00.123Z",
        "publish_time": "2026-12-07T17:00:00.123Z",
    }
    if name is not None:  # TOPIC_CONFIGURED carries eventType alone
        secret, _, version = name.partition("/versions/")
        attrs.update(
            dataFormat="JSON_API_V1", secretId=secret, timestamp="2026-12-07T09:00:00.123456-08:00"
        )
        resource: dict[str, object] = {"name": name, "createTime": "2026-12-07T17:00:00Z"}
        if version:
            attrs["versionId"] = name
            resource["state"] = (
                "DISABLED" if "DISABLE" in event_type or "DESTROY" in event_type else "ENABLED"
            )
        else:
            resource.update(
                replication={"automatic": {}},
                topics=[{"name": "projects/my-project/topics/secrets"}],
            )
        message["data"] = base64.b64encode(json.dumps(resource).encode()).decode()
    return {
        "message": message,
        "subscription": "projects/my-project/subscriptions/keychain-secret-events",
    }


def pubsub_settings(jwks_url: str) -> dict[str, str]:
    return {
        "pubsub_audience": AUDIENCE,
        "pubsub_jwks_url": jwks_url,
        "pubsub_service_account": PUSHER,
    }
