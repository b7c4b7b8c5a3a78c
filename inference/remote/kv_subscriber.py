"""Subscribing to an engine's KV-cache events over ZeroMQ, for trio.

vLLM publishes on a PUB socket (`--kv-events-config '{"enable_kv_cache_events":
true, "publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint":
"tcp://*:5558", "topic": "kv-events"}'`): multipart `(topic, seq, payload)`,
`seq` an unsigned 8-byte big-endian counter from 0 per engine process. Its
ROUTER replay socket answers a request carrying a start seq (8 bytes,
big-endian) with one message per buffered batch from there (the last
`buffer_steps`, 10,000 by default), then an end marker with seq -1 (8 signed
bytes) and an empty payload. vLLM 0.32 sends `(topic, seq, payload)` and
`(b"", -1, b"")`; earlier releases `(seq, payload)` and `(-1, b"")`. Both are read.

The replay client is a DEALER, not the REQ of vLLM's example subscriber: a REQ
socket accepts exactly one reply per request and silently drops the rest, so
a REQ client receives the first missed batch and nothing after it (checked
against vLLM 0.32.0 on CPU, bench/real_vllm.py). A DEALER sends the empty
delimiter frame itself and receives every reply.

Why a thread: a zmq socket is not a file descriptor a trio loop can wait on.
zmq's `FD` option is edge-triggered and signals "the socket's state changed",
not "readable": every recv or send can consume the edge, so a loop must recheck
`EVENTS` after each operation or it sleeps forever with messages queued (the
bug class pyzmq's own asyncio integration has had to fix more than once). A
dedicated thread owning both sockets and blocking in `zmq.Poller` is simple to
get right, keeps zmq calls off the trio thread, and lets the replay exchange
block with a deadline without stalling anything. It hands each decoded batch to
trio with `trio.from_thread.run_sync`, which waits until trio ran it: the
prefix state is only ever touched on the trio thread (no lock), and a trio loop
too busy to keep up makes the thread wait, so zmq queues (and beyond its
high-water mark drops, which the sequence numbers reveal and replay repairs).

Sequencing (`SequenceTracker`, pure): the first batch is applied only once the
history before it is known. With a replay endpoint the subscriber asks for
everything from seq 0 at start (the engine may have run a while), and after
any gap. A history that cannot be recovered (no replay endpoint, the replay
buffer moved on, a deadline passed, a malformed batch) resets the prefix
state: empty and marked inexact (`RemotePrefixState.reset`). seq 0 again means
the engine restarted: its cache is empty.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import trio
import zmq

from .kv_wire import KVEventDecodeError, decode_event_batch
from .prefix_state import RemotePrefixState

log = logging.getLogger(__name__)

_END_SEQ = -1
_POLL_MS = 100  # how long the thread may take to notice it should stop


@dataclass
class SubscriberStats:
    batches: int = 0
    duplicates: int = 0
    gaps: int = 0
    replays: int = 0
    replayed_batches: int = 0
    unfilled_gaps: int = 0
    malformed: int = 0  # frames or payloads that did not decode
    restarts: int = 0  # seq went back to 0
    last_error: str = ""


class SequenceTracker:
    """Which batches to apply, given the seqs that arrive (pure; no I/O).

    `expected` is the next seq to apply, or None when the history is unknown
    (at start, after engine_down)."""

    def __init__(self) -> None:
        self.expected: int | None = None

    def classify(self, seq: int) -> str:
        """"apply", "duplicate", "restart" (seq 0 after a history: a new engine),
        "gap" (batches expected..seq-1 are missing) or "unknown" (no history yet)."""
        if self.expected is None:
            return "apply" if seq == 0 else "unknown"
        if seq == self.expected:
            return "apply"
        if seq > self.expected:
            return "gap"
        return "restart" if seq == 0 else "duplicate"

    def applied(self, seq: int) -> None:
        self.expected = seq + 1


class KVEventSubscriber:
    """Feeds an engine's KV events into a RemotePrefixState, from a thread.

    Run `await subscriber.run()` in a nursery; cancel the nursery to stop it
    (the thread exits within 0.1 s). `engine_down()` (from trio) says the engine
    went away: the state is reset and the next batch starts a new history.
    """

    def __init__(
        self,
        state: RemotePrefixState,
        endpoint: str,
        replay_endpoint: str = "",
        topic: str = "",
        replay_timeout: float = 1.0,
    ) -> None:
        self.state = state
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.topic = topic
        self.replay_timeout = replay_timeout
        self.stats = SubscriberStats()
        self._stop = threading.Event()
        self._forget = threading.Event()  # engine_down() asks the thread to drop its history
        self._catch_up_now = threading.Event()  # engine_up() asks for a catch-up from 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._replay: zmq.Socket[bytes] | None = None  # the thread's DEALER socket
        self.connected = trio.Event()

    async def run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        try:
            # Its own limiter: this thread lives as long as the subscriber and must
            # not hold one of the 40 tokens of trio's default limiter.
            await trio.to_thread.run_sync(self._thread_main, abandon_on_cancel=True,
                                          limiter=trio.CapacityLimiter(1))
        finally:
            self._stop.set()

    def engine_up(self) -> None:
        """The engine is (back) up: if its history is unknown, ask its replay
        buffer now rather than at its next batch (an idle engine publishes none,
        and an empty buffer proves an empty cache)."""
        self._catch_up_now.set()

    def engine_down(self, why: str) -> None:
        """The engine died or hangs: it holds nothing we can route to."""
        self._forget.set()
        self.state.reset(why)

    # -- the thread --------------------------------------------------------------

    def _to_trio(self, fn: Callable[[], None]) -> bool:
        """Run fn on the trio thread and wait for it; False once trio has gone."""
        if self._stop.is_set():
            return False
        try:
            trio.from_thread.run_sync(fn, trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled):
            self._stop.set()
            return False
        return True

    def _thread_main(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        tracker = SequenceTracker()
        try:
            sub.connect(self.endpoint)
            self._to_trio(self.connected.set)
            if self.replay_endpoint:
                self._catch_up(ctx, tracker, 0, None)  # the engine may have run a while
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            while not self._stop.is_set():
                if self._forget.is_set():
                    self._forget.clear()
                    tracker.expected = None
                if self._catch_up_now.is_set():
                    self._catch_up_now.clear()
                    if tracker.expected is None and self.replay_endpoint:
                        self._catch_up(ctx, tracker, 0, None)
                if not poller.poll(_POLL_MS):
                    continue
                while not self._stop.is_set():
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) != 3 or len(frames[1]) != 8:
                        self._malformed(f"a message of {len(frames)} frames, not (topic, seq, "
                                        "payload)")
                        continue
                    self._handle(ctx, tracker, int.from_bytes(frames[1], "big"), frames[2])
        except zmq.ZMQError as e:
            # A bad endpoint (the config checked only its shape) or a torn-down context.
            self.stats.last_error = str(e)
            log.error("KV events from %s stopped: %s", self.endpoint, e)
        finally:
            sub.close(0)
            if self._replay is not None:
                self._replay.close(0)
                self._replay = None
            ctx.term()

    def _handle(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]] | None,
        tracker: SequenceTracker,
        seq: int,
        payload: bytes,
    ) -> None:
        """One batch, live (ctx given: a gap may be replayed) or replayed (ctx None)."""
        verdict = tracker.classify(seq)
        if verdict in ("gap", "unknown") and ctx is not None and self.replay_endpoint:
            if verdict == "gap":
                self.stats.gaps += 1
            self._catch_up(ctx, tracker, tracker.expected or 0, seq)
            verdict = tracker.classify(seq)
            if verdict == "gap":
                self.stats.unfilled_gaps += 1
        elif verdict == "gap" and ctx is not None:
            self.stats.gaps += 1
            self.stats.unfilled_gaps += 1
        if verdict == "duplicate":
            self.stats.duplicates += 1
            return
        if verdict in ("gap", "unknown"):
            first = tracker.expected or 0
            how = "are gone from the replay buffer" if self.replay_endpoint else (
                "were missed (no replay endpoint)")
            self._reset(f"KV events {first}..{seq - 1} {how}")
            tracker.expected = seq  # a new history, inexact, from here
        elif seq == 0 and (verdict == "restart" or tracker.expected is None):
            # The engine's first batch: its cache was empty before it.
            if verdict == "restart":
                self.stats.restarts += 1
            self._to_trio(self.state.clear)
        tracker.applied(seq)
        try:
            batch = decode_event_batch(payload)
        except KVEventDecodeError as e:
            self._malformed(f"batch {seq}: {e}")
            self._reset(f"batch {seq} did not decode, so its events are unknown")
            return
        self.stats.batches += 1
        self._to_trio(lambda: self.state.apply(batch))

    def _reset(self, why: str) -> None:
        self._to_trio(lambda: self.state.reset(why))

    def _malformed(self, what: str) -> None:
        self.stats.malformed += 1
        if self.stats.malformed == 1 or self.stats.last_error[:40] != what[:40]:
            log.warning("KV events from %s: dropped %s", self.endpoint, what)
        self.stats.last_error = what

    def _catch_up(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        tracker: SequenceTracker,
        start: int,
        until: int | None,
    ) -> None:
        """Ask the replay socket for the batches from `start` and handle those
        before `until` (all if None) as if they had arrived live."""
        if self._replay is None:
            self._replay = ctx.socket(zmq.DEALER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.connect(self.replay_endpoint)
        replay = self._replay
        self.stats.replays += 1
        replay.send_multipart([b"", start.to_bytes(8, "big")])  # as a REQ would frame it
        replayed = 0
        while not self._stop.is_set():
            if not replay.poll(int(self.replay_timeout * 1000)):
                # Replies to this request may still come: a fresh socket ignores them.
                log.warning("KV events: no replay from %s within %g s",
                            self.replay_endpoint, self.replay_timeout)
                replay.close(0)
                self._replay = None
                return
            frames = replay.recv_multipart()
            # [b"", (topic,) seq, payload]: vLLM 0.32 adds the topic, older ones do not.
            body = frames[1:] if frames and frames[0] == b"" else frames
            if len(body) == 3:
                body = body[1:]
            if len(body) != 2 or len(body[0]) != 8:
                self._malformed(f"a replay reply of {len(frames)} frames")
                continue
            seq = int.from_bytes(body[0], "big", signed=True)
            if seq == _END_SEQ:
                if replayed == 0 and start == 0 and until is None and tracker.expected is None:
                    # The buffer only ever loses its oldest batches: an empty one
                    # means the engine has published nothing, so holds nothing.
                    self._to_trio(self.state.clear)
                    tracker.expected = 0
                return
            if seq < 0 or (until is not None and seq >= until):
                continue  # the live feed has the later ones
            replayed += 1
            self.stats.replayed_batches += 1
            self._handle(None, tracker, seq, body[1])
