"""Authenticated encryption of every datagram and stream frame (AES-GCM).

Sealed packet layout:

    0      1        2          14            end
    | ver | key id | nonce(12) | ciphertext + 16-byte tag |

`ver` is the envelope version (1). `key id` is the first byte of SHA-256 of the
key, so a receiver tries only matching keys. The nonce is a 4-byte random salt
drawn once per node generation followed by a 64-bit counter: never reused
under one key, and the counter doubles as the sequence number for the replay
window. The envelope header (ver, key id, nonce) is authenticated as
associated data.

Without a keyring (insecure mode) the layout is `| ver | 0 | plaintext |`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import RemoteProtocolError

ENVELOPE_VERSION = 1
INSECURE_KEY_ID = 0
HEADER_LEN = 14
TAG_LEN = 16
#: Bytes that sealing adds to a plaintext.
SEAL_OVERHEAD = HEADER_LEN + TAG_LEN
REPLAY_WINDOW = 1024


def key_id(key: bytes) -> int:
    # 0 is reserved for insecure packets.
    return hashlib.sha256(key).digest()[0] or 1


@dataclass(frozen=True)
class Keyring:
    """The primary key seals; every key in `keys` opens (rotation without downtime).

    File format (JSON): {"primary": "<base64>", "keys": ["<base64>", ...]}; each
    key is 16, 24 or 32 bytes. Rotate by adding the new key to `keys` on every
    node, then making it primary everywhere, then removing the old one.
    """

    primary: bytes
    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        for k in (self.primary, *self.keys):
            if len(k) not in (16, 24, 32):
                raise ValueError("AES-GCM keys are 16, 24 or 32 bytes")
        if self.primary not in self.keys:
            object.__setattr__(self, "keys", (self.primary, *self.keys))

    @classmethod
    def generate(cls, rng: random.Random | None = None) -> Keyring:
        r = rng or random.SystemRandom()
        return cls(bytes(r.getrandbits(8) for _ in range(32)), ())

    @classmethod
    def load(cls, path: str | Path) -> Keyring:
        try:
            data = json.loads(Path(path).read_text())
            primary = base64.b64decode(data["primary"], validate=True)
            keys = tuple(base64.b64decode(k, validate=True) for k in data.get("keys", []))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"keyring {path}: {e}") from None
        return cls(primary, keys)

    def dump(self) -> str:
        return json.dumps(
            {
                "primary": base64.b64encode(self.primary).decode(),
                "keys": [base64.b64encode(k).decode() for k in self.keys],
            },
            indent=1,
        )


class Sealer:
    """Seals outgoing packets for one node generation."""

    def __init__(self, keyring: Keyring | None, rng: random.Random) -> None:
        self.keyring = keyring
        self._salt = rng.getrandbits(32).to_bytes(4, "big")
        self._counter = 0
        self._primary = AESGCM(keyring.primary) if keyring else None
        self._kid = key_id(keyring.primary) if keyring else INSECURE_KEY_ID

    def seal(self, plaintext: bytes) -> bytes:
        if self._primary is None:
            return bytes((ENVELOPE_VERSION, INSECURE_KEY_ID)) + plaintext
        self._counter += 1
        nonce = self._salt + struct.pack(">Q", self._counter)
        header = bytes((ENVELOPE_VERSION, self._kid)) + nonce
        return header + self._primary.encrypt(nonce, plaintext, header)


class Opener:
    """Opens incoming packets; every failure is a `RemoteProtocolError`."""

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        self._by_id: dict[int, list[AESGCM]] = {}
        if keyring:
            for k in keyring.keys:
                self._by_id.setdefault(key_id(k), []).append(AESGCM(k))

    def open(self, data: bytes) -> tuple[bytes, bytes]:
        """Returns (plaintext, nonce); nonce is b"" for insecure packets."""
        if len(data) < 2:
            raise RemoteProtocolError("truncated", "packet shorter than its header")
        if data[0] != ENVELOPE_VERSION:
            raise RemoteProtocolError("bad_version", f"envelope version {data[0]}")
        kid = data[1]
        if self.keyring is None:
            if kid != INSECURE_KEY_ID:
                raise RemoteProtocolError("auth_failed", "encrypted packet, no keyring here")
            return data[2:], b""
        if kid == INSECURE_KEY_ID:
            raise RemoteProtocolError("auth_failed", "unencrypted packet refused")
        if len(data) < SEAL_OVERHEAD:
            raise RemoteProtocolError("truncated", "sealed packet too short")
        header, nonce = data[:HEADER_LEN], data[2:HEADER_LEN]
        for aead in self._by_id.get(kid, ()):
            try:
                return aead.decrypt(nonce, data[HEADER_LEN:], header), nonce
            except InvalidTag:
                continue
        raise RemoteProtocolError("auth_failed", "no key opens this packet")


class ReplayWindow:
    """Sliding window over one sender generation's nonce counters (as in IPsec)."""

    __slots__ = ("_seen", "high")

    def __init__(self) -> None:
        self.high = 0
        self._seen = 0  # bit i set: counter (high - i) seen

    def check_and_set(self, counter: int) -> bool:
        if counter > self.high:
            shift = counter - self.high
            self._seen = ((self._seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.high = counter
            return True
        offset = self.high - counter
        if offset >= REPLAY_WINDOW:
            return False
        bit = 1 << offset
        if self._seen & bit:
            return False
        self._seen |= bit
        return True


def nonce_counter(nonce: bytes) -> tuple[bytes, int]:
    return nonce[:4], struct.unpack(">Q", nonce[4:])[0]
