"""The AES-256-GCM key ring that seals every payload before it reaches the database.

Envelope layout (bytes): version (1) | key id length (1) | key id | nonce (12) | ciphertext+tag.
The cache key is the associated data, so a ciphertext copied onto another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.errors import ConfigurationError, UnreadableEntry

log = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LOCAL_KEY_FILE = "encryption.key"


@dataclass(frozen=True)
class Sealed:
    key_id: str
    envelope: bytes


class KeyRing:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigurationError("no encryption key configured (KEYCHAIN_ENCRYPTION_KEYS)")
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if not _KEY_ID.match(key_id):
                raise ConfigurationError(
                    f"encryption key id {key_id!r} must be 1-64 letters, digits, '.', '_' or '-'"
                )
            if len(key) != KEY_BYTES:
                raise ConfigurationError(
                    f"encryption key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}"
                )
            if key_id in self._ciphers:
                raise ConfigurationError(f"encryption key id {key_id!r} appears twice")
            self._ciphers[key_id] = AESGCM(key)
        self.primary_key_id = keys[0][0]

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Parse "k2:<base64>,k1:<base64>"; the key material never appears in an error."""
        keys = []
        for position, item in enumerate(filter(None, (part.strip() for part in spec.split(","))), 1):
            key_id, sep, encoded = item.partition(":")
            if not sep:
                # Named by position: the entry may be a bare key, which must not be echoed.
                raise ConfigurationError(
                    f"KEYCHAIN_ENCRYPTION_KEYS entry {position} must look like '<id>:<base64 key>'"
                )
            try:
                key = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise ConfigurationError(f"encryption key {key_id!r} is not valid base64") from exc
            keys.append((key_id, key))
        return cls(keys)

    @classmethod
    def load_or_create_local(cls, data_dir: Path) -> KeyRing:
        """Local mode only: keep one generated key in the data directory, readable by us alone."""
        path = data_dir / LOCAL_KEY_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            spec = "local:" + base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(spec + "\n")
            log.warning(
                "no KEYCHAIN_ENCRYPTION_KEYS configured: generated a local key in %s (mode 0600); "
                "set KEYCHAIN_ENCRYPTION_KEYS in any shared deployment",
                path,
            )
        return cls.parse(path.read_text().strip())

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
            raise UnreadableEntry(f"stored entry is sealed by key {key_id!r}, which is not configured")
        nonce = envelope[id_end : id_end + NONCE_BYTES]
        ciphertext = envelope[id_end + NONCE_BYTES :]
        try:
            return cipher.decrypt(nonce, ciphertext, associated_data)
        except InvalidTag as exc:
            raise UnreadableEntry("stored entry failed its integrity check") from exc
