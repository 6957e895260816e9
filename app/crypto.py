"""The AES-256-GCM key ring that seals every payload before it reaches the database.

Envelope layout (bytes): version (1) | key id length (1) | key id | nonce (12) | ciphertext+tag.
The associated data (bound_data) names the row and the write that sealed it, so a ciphertext
copied onto another row, or an older one replayed onto the same row, does not open.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.errors import ConfigurationError, UnreadableEntry

log = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LOCAL_KEY_FILE = "encryption.key"
ENCRYPTION_KEYS_SETTING = "KEYCHAIN_ENCRYPTION_KEYS"
MIN_DISTINCT_KEY_BYTES = 16
GENERATE_KEY = "generate one with: keychain keys new"
BINDING_VERSION = "keychain-entry/2"
WRITE_ID_BYTES = 16


@dataclass(frozen=True)
class Sealed:
    key_id: str
    envelope: bytes


def parse_keys(spec: str, setting: str) -> list[tuple[str, bytes]]:
    """Parse "k2:<base64>,k1:<base64>" into (id, 32-byte key) pairs, first one first.

    Key material never appears in an error: entries are named by position or id.
    """
    keys: list[tuple[str, bytes]] = []
    for position, item in enumerate(filter(None, (part.strip() for part in spec.split(","))), 1):
        key_id, sep, encoded = item.partition(":")
        if not sep:
            # Named by position: the entry may be a bare key, which must not be echoed.
            raise ConfigurationError(
                f"{setting} entry {position} must look like '<id>:<base64 key>'"
            )
        check_key_id(key_id, setting)
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ConfigurationError(f"{setting}: key {key_id!r} is not valid base64") from exc
        if len(key) != KEY_BYTES:
            raise ConfigurationError(
                f"{setting}: key {key_id!r} is {len(key)} bytes; it must be {KEY_BYTES}"
            )
        if len(set(key)) < MIN_DISTINCT_KEY_BYTES:
            # Random keys have ~26 distinct bytes in 32; all zeros or a repeated pattern is a
            # placeholder someone forgot to replace.
            raise ConfigurationError(
                f"{setting}: key {key_id!r} looks like a placeholder, not random bytes; {GENERATE_KEY}"
            )
        if key_id in (known for known, _ in keys):
            raise ConfigurationError(f"{setting}: key id {key_id!r} appears twice")
        keys.append((key_id, key))
    if not keys:
        raise ConfigurationError(f"no key configured ({setting})")
    return keys


def check_key_id(key_id: str, setting: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            f"{setting}: key id {key_id!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    return key_id


def new_key_entry(key_id: str) -> str:
    """One `id:<base64 of 32 random bytes>` entry, as KEYCHAIN_ENCRYPTION_KEYS lists them."""
    return f"{key_id}:" + base64.b64encode(os.urandom(KEY_BYTES)).decode()


def load_or_create_local_keys(
    path: Path, key_id: str, setting: str, purpose: str
) -> list[tuple[str, bytes]]:
    """Local mode only: keep one generated key in the data directory, readable by us alone."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = new_key_entry(key_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(spec + "\n")
        log.warning(
            "no %s configured: generated a local %s key in %s (mode 0600); set %s in any shared deployment",
            setting,
            purpose,
            path,
            setting,
        )
    return parse_keys(path.read_text().strip(), setting)


def bound_data(entry: Mapping[str, Any]) -> bytes:
    """The associated data that ties a ciphertext to its row and to the write that sealed it.

    `write_id` is random per write, so an older ciphertext of the same key (or one moved to
    another execution or writer) does not open on this row. Rows sealed before migration 0002
    have no write_id and are bound to their cache key alone until `keychain rotate-keys`
    re-seals them.
    """
    cache_key: str = entry["cache_key"]
    if entry["write_id"] is None:
        return cache_key.encode()
    return msgspec.json.encode(
        [
            BINDING_VERSION,
            cache_key,
            bytes(entry["write_id"]).hex(),
            entry["credential_name"],
            entry["scope_type"],
            entry["execution_id"],
            entry["parent_execution_id"],
            entry["written_by"],
        ]
    )


def new_write_id() -> bytes:
    return os.urandom(WRITE_ID_BYTES)


class KeyRing:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}
        self.primary_key_id = keys[0][0]

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        return cls(parse_keys(spec, ENCRYPTION_KEYS_SETTING))

    @classmethod
    def load_or_create_local(cls, data_dir: Path) -> KeyRing:
        return cls(
            load_or_create_local_keys(
                data_dir / LOCAL_KEY_FILE, "local", ENCRYPTION_KEYS_SETTING, "encryption"
            )
        )

    def seal(self, plaintext: bytes, associated_data: bytes) -> Sealed:
        key_id = self.primary_key_id
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._ciphers[key_id].encrypt(nonce, plaintext, associated_data)
        encoded_id = key_id.encode()
        envelope = bytes([ENVELOPE_VERSION, len(encoded_id)]) + encoded_id + nonce + ciphertext
        return Sealed(key_id, envelope)

    def open(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Decrypt, or raise UnreadableEntry: every failure fails closed, with the reason."""
        if len(envelope) < 2 or envelope[0] != ENVELOPE_VERSION:
            raise UnreadableEntry("stored entry has an unknown envelope format")
        id_end = 2 + envelope[1]
        if len(envelope) < id_end + NONCE_BYTES:
            raise UnreadableEntry("stored entry is truncated")
        key_id = envelope[2:id_end].decode("ascii", errors="replace")
        if not _KEY_ID.fullmatch(key_id):
            # A damaged length byte reads nonce and ciphertext as the id: never echo those.
            raise UnreadableEntry("stored entry has a malformed key id")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnreadableEntry(
                f"stored entry is sealed by key {key_id!r}, which is not configured"
            )
        nonce = envelope[id_end : id_end + NONCE_BYTES]
        ciphertext = envelope[id_end + NONCE_BYTES :]
        try:
            return cipher.decrypt(nonce, ciphertext, associated_data)
        except InvalidTag as exc:
            raise UnreadableEntry("stored entry failed its integrity check") from exc
