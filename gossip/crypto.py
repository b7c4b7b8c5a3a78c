"""Authenticated encryption of every datagram and stream frame (AES-GCM).

Sealed packet layout (envelope version 2):

    0     1        2           14            22
    | ver | key id | salt (12) | counter (8) | ciphertext + 16-byte tag |

Nonce uniqueness does not rest on a short random draw. Each sender generation
draws a 96-bit random salt and seals with its own subkey,
HKDF-SHA256(cluster key, salt, "rumor gossip v2"); under that subkey the
96-bit GCM nonce is (channel, counter), a deterministic construction (NIST SP
800-38D, 8.2.1) with one counter per channel, so no nonce repeats under a
subkey. Subkeys collide only if two generations draw the same salt: with n
generations under one cluster key that chance is at most n^2 / 2^97, below
2^-32 for n up to 6 * 10^9 generations (docs/PROTOCOL.md has the arithmetic).

The channel (0: datagrams, 1: stream frames) is not sent: the receiver knows
which transport a packet came by, and a packet moved to the other transport
fails to open. Each channel counts its own packets, so its replay window sees
a dense sequence: a large stream frame sealed long before later datagrams is
no longer taken for a replay.

`key id` is the first byte of SHA-256 of the cluster key, so a receiver tries
only matching keys. The whole 22-byte header is associated data.

Without a keyring (insecure mode) the layout is `| ver | 0 | plaintext |`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import RemoteProtocolError

ENVELOPE_VERSION = 2
INSECURE_KEY_ID = 0
SALT_LEN = 12
HEADER_LEN = 2 + SALT_LEN + 8
TAG_LEN = 16
#: Bytes that sealing adds to a plaintext.
SEAL_OVERHEAD = HEADER_LEN + TAG_LEN
REPLAY_WINDOW = 1024
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
#: Channels: each has its own counter, nonce space and replay window.
DATAGRAM, STREAM = 0, 1
_HKDF_INFO = b"rumor gossip v2"
_COUNTER = struct.Struct(">Q")
#: The GCM nonce is (channel: u32, counter: u64), big-endian: the channel's
#: four bytes here, then the counter's eight as the header carries them.
_CHANNEL_BYTES = (b"\x00\x00\x00\x00", b"\x00\x00\x00\x01")


def subkey(key: bytes, salt: bytes) -> bytes:
    """One sender generation's sealing key: HKDF-SHA256 of the cluster key."""
    return HKDF(hashes.SHA256(), len(key), salt, _HKDF_INFO).derive(key)


#: Derived subkeys, as ready ciphers, shared by every Opener and Sealer in the
#: process: a subkey is a pure function of (cluster key, salt), and a
#: simulator's thousand nodes would otherwise each derive (HKDF, about 8 us)
#: and hold their own copy of the same thousand subkeys. Least recently used
#: entries go first once it is full.
_SUBKEYS: OrderedDict[tuple[bytes, bytes], AESGCM] = OrderedDict()
SUBKEY_CACHE = 16384


def _cipher(key: bytes, salt: bytes) -> AESGCM:
    """The AES-GCM cipher of one sender generation's subkey (cached)."""
    got = _SUBKEYS.get((key, salt))
    if got is None:
        got = _SUBKEYS[(key, salt)] = AESGCM(subkey(key, salt))
        if len(_SUBKEYS) > SUBKEY_CACHE:
            _SUBKEYS.popitem(last=False)
    else:
        _SUBKEYS.move_to_end((key, salt))
    return got


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
        self.salt = rng.getrandbits(8 * SALT_LEN).to_bytes(SALT_LEN, "big")
        self._counters = [0, 0]  # per channel
        # The bound method, looked up once: sealing runs once per packet sent.
        self._encrypt = _cipher(keyring.primary, self.salt).encrypt if keyring else None
        kid = key_id(keyring.primary) if keyring else INSECURE_KEY_ID
        #: The header's first 14 bytes never change: version, key id, salt.
        self._prefix = bytes((ENVELOPE_VERSION, kid)) + (self.salt if keyring else b"")

    def seal(self, plaintext: bytes, channel: int = DATAGRAM) -> bytes:
        if self._encrypt is None:
            return self._prefix + plaintext
        counter = self._counters[channel] + 1
        self._counters[channel] = counter
        packed = _COUNTER.pack(counter)
        header = self._prefix + packed
        return header + self._encrypt(_CHANNEL_BYTES[channel] + packed, plaintext, header)


class Opener:
    """Opens incoming packets; every failure is a `RemoteProtocolError`."""

    def __init__(self, keyring: Keyring | None) -> None:
        self.keyring = keyring
        self._by_id: dict[int, list[bytes]] = {}
        if keyring:
            for k in keyring.keys:
                self._by_id.setdefault(key_id(k), []).append(k)

    def open(self, data: bytes, channel: int = DATAGRAM) -> tuple[bytes, bytes, int]:
        """Returns (plaintext, salt, counter); salt is b"" for insecure packets."""
        if len(data) < 2:
            raise RemoteProtocolError("truncated", "packet shorter than its header")
        if data[0] != ENVELOPE_VERSION:
            raise RemoteProtocolError("bad_version", f"envelope version {data[0]}")
        kid = data[1]
        if self.keyring is None:
            if kid != INSECURE_KEY_ID:
                raise RemoteProtocolError("auth_failed", "encrypted packet, no keyring here")
            return data[2:], b"", 0
        if kid == INSECURE_KEY_ID:
            raise RemoteProtocolError("auth_failed", "unencrypted packet refused")
        if len(data) < SEAL_OVERHEAD:
            raise RemoteProtocolError("truncated", "sealed packet too short")
        header = data[:HEADER_LEN]
        salt = data[2 : 2 + SALT_LEN]
        (counter,) = _COUNTER.unpack_from(data, 2 + SALT_LEN)
        iv = _CHANNEL_BYTES[channel] + header[2 + SALT_LEN :]
        for key in self._by_id.get(kid, ()):
            try:
                plaintext = _cipher(key, salt).decrypt(iv, data[HEADER_LEN:], header)
            except InvalidTag:
                continue
            return plaintext, salt, counter
        raise RemoteProtocolError("auth_failed", "no key opens this packet")


class ReplayWindow:
    """Sliding window over one sender generation's counters on one channel
    (as in IPsec)."""

    __slots__ = ("_seen", "high")

    def __init__(self) -> None:
        self.high = 0
        self._seen = 0  # bit i set: counter (high - i) seen

    def check_and_set(self, counter: int) -> bool:
        if counter > self.high:
            shift = counter - self.high
            # A jump past the window forgets it whole (no shift of a huge int).
            seen = ((self._seen << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            self._seen = seen
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
