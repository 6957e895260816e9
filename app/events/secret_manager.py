"""What a Secret Manager event notification means for the cache: which credential names to drop.

Secret Manager publishes a message per change to a secret's topics: attributes `eventType`,
`secretId` (the secret's full name, with the project NUMBER), `versionId` on version events,
and `data`, the Secret or SecretVersion as JSON. Pub/Sub pushes it base64-encoded in its push
body. Every action is a drop, so a message delivered twice or out of order can cost a cache
miss, never a stale value.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import msgspec

_SECRET = r"projects/[A-Za-z0-9.:_-]{1,100}/(?:locations/[A-Za-z0-9_-]{1,64}/)?secrets/[A-Za-z0-9_-]{1,255}"
SECRET_NAME = re.compile(_SECRET)
VERSION_NAME = re.compile(rf"(?P<secret>{_SECRET})/versions/[1-9][0-9]{{0,18}}")

# A version can no longer be read: its entries go, and so do those read through `latest`,
# which may hold its value (the event does not say whether it was the latest).
VERSION_GONE = frozenset(
    {"SECRET_VERSION_DISABLE", "SECRET_VERSION_DESTROY", "SECRET_VERSION_DESTROY_SCHEDULED"}
)
# `latest` may now name another version (or a rotation is due): what was read through it goes.
LATEST_MOVED = frozenset({"SECRET_VERSION_ADD", "SECRET_VERSION_ENABLE"})
VERSION_EVENTS = VERSION_GONE | LATEST_MOVED
# Nothing a cache holds changes: acknowledged, nothing dropped.
HARMLESS = frozenset({"TOPIC_CONFIGURED", "SECRET_CREATE", "SECRET_UPDATE"})


class PushMessage(msgspec.Struct, kw_only=True):
    attributes: dict[str, str] = {}
    data: str | None = None
    messageId: str | None = None


class PushBody(msgspec.Struct, kw_only=True):
    """The body of a Pub/Sub push (wrapped; a subscription with --push-no-wrapper sends
    something else). Fields it may add are ignored."""

    message: PushMessage
    subscription: str | None = None


class _Resource(msgspec.Struct):
    name: str


@dataclass(frozen=True)
class Drop:
    """Drop the entries of these credential names, and of names under these prefixes."""

    resource: str
    names: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ignore:
    reason: str


def interpret(message: PushMessage) -> Drop | Ignore:
    """What to drop for this message, or why nothing is. A message that cannot be understood
    now never will be: it is ignored (and acknowledged), never guessed at."""
    event_type = message.attributes.get("eventType")
    if event_type is None:
        return Ignore("no eventType attribute: not a Secret Manager event")
    if event_type in HARMLESS:
        return Ignore(f"{event_type} changes no cached value")
    if event_type not in VERSION_EVENTS | {"SECRET_ROTATE", "SECRET_DELETE"}:
        return Ignore(f"unknown event type {event_type[:64]!r}")
    named = _named_in_data(message.data)
    if isinstance(named, Ignore):
        return named
    if event_type in VERSION_EVENTS:
        version = _agreed(message.attributes.get("versionId"), named, "version")
        if isinstance(version, Ignore):
            return version
        match = VERSION_NAME.fullmatch(version)
        if match is None:
            return Ignore(
                "versionId is not a Secret Manager version name (projects/P/secrets/S/versions/N)"
            )
        secret = match["secret"]
        if message.attributes.get("secretId", secret) != secret:
            return Ignore("secretId and versionId name different secrets")
        latest = f"{secret}/versions/latest"
        if event_type in VERSION_GONE:
            return Drop(version, names=(version, latest))
        return Drop(version, names=(latest,))
    secret = _agreed(message.attributes.get("secretId"), named, "secret")
    if isinstance(secret, Ignore):
        return secret
    if SECRET_NAME.fullmatch(secret) is None:
        return Ignore("secretId is not a Secret Manager secret name (projects/P/secrets/S)")
    if event_type == "SECRET_ROTATE":
        return Drop(secret, names=(f"{secret}/versions/latest",))
    return Drop(secret, prefixes=(f"{secret}/versions/",))  # SECRET_DELETE


def _named_in_data(data: str | None) -> str | Ignore | None:
    """The resource name the data holds; None without data (the attributes then suffice)."""
    if not data:
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return Ignore("data is not base64")
    try:
        return msgspec.json.decode(raw, type=_Resource).name
    except (msgspec.DecodeError, RecursionError):
        return Ignore("data is not a Secret or SecretVersion as JSON")


def _agreed(attribute: str | None, from_data: str | None, what: str) -> str | Ignore:
    if attribute is not None and from_data is not None and attribute != from_data:
        return Ignore(f"the attributes and the data name different {what}s")
    name = attribute if attribute is not None else from_data
    if name is None:
        return Ignore(f"the message names no {what}")
    return name
