"""A fake of vLLM's KV-events publisher: a PUB socket and a ROUTER replay socket.

Encoded the way vLLM encodes (msgspec structs: a tagged union with the tag
first, `omit_defaults`), in both encodings in the field:
`encoding="map"` as vLLM 0.26+ (events are maps with "type"; the batch an
array), `"array"` as vLLM <= 0.23 (everything positional). Replies to replay
requests in vLLM 0.32's framing `(topic, seq, payload)` or, with
`legacy_replay=True`, the older `(seq, payload)`.

All sockets live on one thread (zmq sockets are not thread-safe); callers
queue commands. Faults: `skip_live` (buffered for replay, not sent: a
fillable gap), `forget` (neither: an unfillable gap), `send_raw` (any frames).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

import msgspec
import zmq


class _Batch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class _ArrayEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class _MapEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class ArrayBlockStored(_ArrayEvent, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None = None
    lora_name: str | None = None


class ArrayBlockRemoved(_ArrayEvent, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None = None


class ArrayAllBlocksCleared(_ArrayEvent, tag="AllBlocksCleared"):
    pass


class MapBlockStored(_MapEvent, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None


class MapBlockRemoved(_MapEvent, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None


class MapAllBlocksCleared(_MapEvent, tag="AllBlocksCleared"):
    pass


def stored(
    hashes: list[int | bytes],
    parent: int | bytes | None,
    tokens: list[int],
    block_size: int = 16,
    encoding: str = "map",
    lora_id: int | None = None,
    extra_keys: list[Any] | None = None,
    medium: str | None = "GPU",
    group_idx: int | None = 0,
) -> Any:
    if encoding == "array":
        return ArrayBlockStored(hashes, parent, tokens, block_size, lora_id, medium)
    return MapBlockStored(hashes, parent, tokens, block_size, lora_id, medium, None,
                          extra_keys if extra_keys is not None else [None] * len(hashes),
                          group_idx, "full_attention")


def removed(hashes: list[int | bytes], encoding: str = "map", medium: str | None = "GPU") -> Any:
    if encoding == "array":
        return ArrayBlockRemoved(hashes, medium)
    return MapBlockRemoved(hashes, medium, 0)


def cleared(encoding: str = "map") -> Any:
    return ArrayAllBlocksCleared() if encoding == "array" else MapAllBlocksCleared()


def encode_batch(events: list[Any], ts: float | None = None) -> bytes:
    return msgspec.msgpack.encode(_Batch(time.time() if ts is None else ts, events, 0))


class FakeKVPublisher:
    """Binds tcp://127.0.0.1:<port> (PUB) and :<replay_port> (ROUTER); 0 = any free port."""

    def __init__(
        self,
        port: int = 0,
        replay_port: int | None = 0,
        topic: str = "kv-events",
        buffer_steps: int = 10_000,
        legacy_replay: bool = False,
    ) -> None:
        self.topic = topic.encode()
        self.legacy_replay = legacy_replay
        self.seq = 0
        self.replay_requests = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self.port = _bind(self._pub, port)
        self._router: zmq.Socket[bytes] | None = None
        self.replay_port: int | None = None
        if replay_port is not None:
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self.replay_port = _bind(self._router, replay_port)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="fake-kv-publisher", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def replay_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.replay_port}" if self.replay_port else ""

    def publish(self, events: list[Any], skip_live: bool = False, forget: bool = False) -> int:
        """Publish one batch; returns its seq."""
        return self.publish_payload(encode_batch(events), skip_live, forget)

    def publish_payload(self, payload: bytes, skip_live: bool = False, forget: bool = False) -> int:
        with self._lock:
            seq = self.seq
            self.seq += 1
        self._commands.put(("publish", (seq, payload, skip_live, forget)))
        return seq

    def send_raw(self, frames: list[bytes]) -> None:
        self._commands.put(("raw", frames))

    def restart(self) -> None:
        """As a restarted engine: seq from 0, an empty replay buffer."""
        with self._lock:
            self.seq = 0
        self._commands.put(("restart", None))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued command was carried out."""
        done = threading.Event()
        self._commands.put(("flush", done))
        done.wait(timeout)

    def close(self) -> None:
        self._commands.put(("stop", None))
        self._thread.join(5)

    def _main(self) -> None:
        try:
            while True:
                if self._router is not None and self._router.poll(5):
                    self._serve_replay()
                try:
                    kind, arg = self._commands.get(timeout=0 if self._router else 0.05)
                except queue.Empty:
                    continue
                if kind == "stop":
                    return
                if kind == "publish":
                    seq, payload, skip_live, forget = arg
                    if not forget:
                        self._buffer.append((seq, payload))
                    if not (skip_live or forget):
                        self._pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
                elif kind == "raw":
                    self._pub.send_multipart(arg)
                elif kind == "restart":
                    self._buffer.clear()
                elif kind == "flush":
                    arg.set()
        finally:
            self._pub.close(0)
            if self._router is not None:
                self._router.close(0)
            self._ctx.term()

    def _serve_replay(self) -> None:
        assert self._router is not None
        frames = self._router.recv_multipart()
        if len(frames) != 3:
            return
        self.replay_requests += 1
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= first:
                body = [seq.to_bytes(8, "big"), payload]
                self._router.send_multipart([client, b"", *([] if self.legacy_replay
                                                              else [self.topic]), *body])
        end = [(-1).to_bytes(8, "big", signed=True), b""]
        self._router.send_multipart([client, b"", *([] if self.legacy_replay else [b""]), *end])


def _bind(sock: zmq.Socket[bytes], port: int) -> int:
    if port:
        sock.bind(f"tcp://127.0.0.1:{port}")
        return port
    return sock.bind_to_random_port("tcp://127.0.0.1")
