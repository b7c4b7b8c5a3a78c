"""The trio runtime for the gossip core: a UDP socket for datagrams and a TCP
listener on the same port for bulk frames.

The core is fed `trio.current_time()` (monotonic); `unix_time()` converts an
event's time to wall-clock seconds for the application.

TCP framing: a connection opens with `u32 length` + a sealed preamble (at
most 512 bytes) that names the sender and announces the byte count of what
follows: frames of `u32 big-endian length` + sealed envelope, each at most
`max_stream_frame` bytes. A receiver reads the preamble within
`stream_first_frame_s` and authenticates it before it buffers anything
larger, and holds at most `max_streams` connections (`max_streams_per_ip`
per source address); every refusal is counted as a drop.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import struct
import time
from collections.abc import Callable

import trio

from .alarm import ScopeAlarm, TimerFdAlarm, new_alarm
from .config import GossipConfig
from .core import Datagram, GossipEvent, GossipNode, StreamFrame
from .crypto import Keyring
from .errors import LocalProtocolError, RemoteProtocolError
from .wire import MAX_PREAMBLE, Addr

log = logging.getLogger("rumor.gossip.transport")
_LEN = struct.Struct(">I")
#: Datagrams read per wake-up before other tasks get a turn.
_RECV_BATCH = 64


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_hostport(text: str) -> Addr:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: port {port!r} is not a number") from None
    if not 0 <= p < 65536:
        raise ValueError(f"{text!r}: port out of range")
    return (host.strip("[]"), p)


def fmt_addr(addr: tuple[str, int]) -> str:
    """HOST:PORT, with an IPv6 host in brackets: what `parse_hostport` reads."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GossipRuntime:
    """Runs one `GossipNode` on real sockets. Use inside a nursery:

    rt = GossipRuntime(name, ("127.0.0.1", 0), keyring=..., seeds=[...])
    await nursery.start(rt.run)      # binds, then returns; rt.addr is bound
    rt.node.set_key(...); rt.kick()  # local changes, then flush
    """

    def __init__(
        self,
        name: str,
        bind: Addr,
        *,
        seeds: list[Addr] | None = None,
        remembered: list[Addr] | None = None,
        config: GossipConfig | None = None,
        keyring: Keyring | None = None,
        insecure: bool = False,
        generation: int | None = None,
        seed: int | None = None,
        on_events: Callable[[list[GossipEvent]], None] | None = None,
        on_tick: Callable[[float], None] | None = None,
        setup: Callable[[GossipNode], None] | None = None,
        clock_skew: float = 0.0,
    ) -> None:
        if keyring is None and not insecure and not is_loopback(bind[0]):
            raise LocalProtocolError(
                f"refusing to bind {bind[0]} without a keyring: gossip would be "
                "unauthenticated and in clear text (pass a keyring, or --insecure)"
            )
        self.name = name
        self.bind = bind
        self.seeds = seeds or []
        #: Members a previous process knew (the node's snapshot): knocked on like
        #: seeds while we are alone, so a restart rejoins even if seeds died.
        self.remembered = remembered or []
        self.config = config or GossipConfig()
        self.keyring = keyring
        self.generation = generation if generation is not None else time.time_ns() // 1_000_000
        self.rng = random.Random(seed) if seed is not None else random.Random()
        self.on_events = on_events
        #: Called after each timer tick with its time: periodic work of the
        #: application can ride on the core's wake-ups instead of adding its
        #: own (an idle process's CPU is mostly its wake-ups; issue #18).
        self.on_tick = on_tick
        self.setup = setup
        self.node: GossipNode | None = None  # set once bound
        self.addr: Addr | None = None
        self._raw: socket.socket
        self._nursery: trio.Nursery | None = None
        self._alarm: TimerFdAlarm | ScopeAlarm | None = None  # the core's next deadline
        self._streams: set[Addr] = set()  # inbound streams being read
        self._streams_by_ip: dict[str, int] = {}
        self._clock_offset = time.time() - trio.current_time() if _in_trio() else 0.0
        #: Added to the OS wall clock the core sees (to rehearse clock faults).
        self.clock_skew = clock_skew

    def unix_time(self, t: float) -> float:
        return t + self._clock_offset

    async def run(self, *, task_status: trio.TaskStatus[Addr] = trio.TASK_STATUS_IGNORED) -> None:
        self._clock_offset = time.time() - trio.current_time()
        host, port = self.bind
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # UDP and TCP share one port number. With port 0 the OS picks a free UDP
        # port, which a TCP socket may already hold: then pick again.
        for attempt in range(20):
            # A stdlib socket in non-blocking mode: sends are synchronous and never
            # wait (a full buffer is loss, as on a wire); receives wait on trio's
            # readiness, then read without blocking.
            raw = socket.socket(family, socket.SOCK_DGRAM)
            raw.setblocking(False)
            try:
                raw.bind((host, port))
                bound_port = raw.getsockname()[1]
                listeners = await trio.open_tcp_listeners(bound_port, host=host)
                break
            except OSError:
                raw.close()
                if port != 0 or attempt == 19:
                    raise
        self._raw = raw
        self._alarm = alarm = new_alarm()
        self.addr = (host, bound_port)
        self.node = GossipNode(
            self.name,
            self.addr,
            rng=self.rng,
            now=trio.current_time(),
            generation=self.generation,
            config=self.config,
            keyring=self.keyring,
            wall_offset=self._clock_offset + self.clock_skew,
        )
        if self.setup is not None:
            self.setup(self.node)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._recv_loop)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(trio.serve_listeners, self._serve_stream, listeners)
                if self.seeds or self.remembered:
                    self.node.join(self.seeds, trio.current_time(), remembered=self.remembered)
                    self.kick()
                task_status.started(self.addr)
        finally:
            trio.lowlevel.notify_closing(raw)
            raw.close()
            alarm.close()

    def kick(self) -> None:
        """Flush what the core wants to send and re-arm its timer. Call after
        any local change (set_key, update_crdt, leave)."""
        node = self.node
        if node is None or self._nursery is None:
            return
        for out in node.take_outgoing():
            if isinstance(out, Datagram):
                self._send_datagram(out)
            else:
                self._nursery.start_soon(self._send_frame, out)
        events = node.take_events()
        if events and self.on_events is not None:
            self.on_events(events)
        if self._alarm is not None:
            self._alarm.set(node.next_deadline())

    def _send_datagram(self, out: Datagram) -> None:
        try:
            self._raw.sendto(out.data, out.dst)
        except (OSError, ValueError, TypeError, OverflowError) as e:
            # An unreachable or unusable address (the wire layer admits IP
            # literals only, so this is a peer's bad data): never fatal.
            log.debug("send to %s failed: %s", out.dst, e)

    async def _send_frame(self, out: StreamFrame) -> None:
        assert self.node is not None
        try:
            with trio.move_on_after(5):
                stream = await trio.open_tcp_stream(*out.dst)
                async with stream:
                    preamble = self.node.seal_preamble(4 + len(out.data))
                    await stream.send_all(
                        _LEN.pack(len(preamble)) + preamble + _LEN.pack(len(out.data)) + out.data
                    )
        except (OSError, ValueError, TypeError, OverflowError) as e:
            log.debug("stream to %s failed: %s", out.dst, e)

    async def _recv_loop(self) -> None:
        # Wait for readiness, then read what has come without blocking: one
        # wake-up for a burst, and no trio socket wrapper around each read.
        node, raw = self.node, self._raw
        assert node is not None
        while True:
            await trio.lowlevel.wait_readable(raw)
            for _ in range(_RECV_BATCH):
                try:
                    data, src = raw.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError as e:  # e.g. ICMP port unreachable surfaced on Linux
                    log.debug("recvfrom: %s", e)
                    continue
                node.receive_datagram(data, (src[0], src[1]), trio.current_time())
                self.kick()

    async def _timer_loop(self) -> None:
        node, alarm = self.node, self._alarm
        assert node is not None and alarm is not None
        while not node.left:  # a node that left ticks no more
            alarm.set(node.next_deadline())
            await alarm.wait()
            now = trio.current_time()
            node.tick(now)
            self.kick()
            if self.on_tick is not None:
                self.on_tick(now)

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        """One inbound stream: a sealed preamble within `stream_first_frame_s`,
        then exactly the bytes it announced. Capped in number, overall and per
        source address; nothing large is buffered for a peer that cannot seal."""
        assert self.node is not None
        node = self.node
        try:
            peer = stream.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        src = (peer[0], peer[1])
        if (
            len(self._streams) >= self.config.max_streams
            or self._streams_by_ip.get(src[0], 0) >= self.config.max_streams_per_ip
        ):
            self._refuse("stream_cap")
            await trio.aclose_forcefully(stream)
            return
        self._streams.add(src)
        self._streams_by_ip[src[0]] = self._streams_by_ip.get(src[0], 0) + 1
        try:
            with trio.move_on_after(self.config.stream_first_frame_s) as first:
                (n,) = _LEN.unpack(await _read_exactly(stream, 4))
                if n > MAX_PREAMBLE:
                    return self._refuse("oversized")
                preamble = bytes(await _read_exactly(stream, n))
                total = node.open_preamble(preamble, src, trio.current_time())
            if first.cancelled_caught:
                return self._refuse("stream_timeout")
            if total > self.config.max_stream_frame + 4:
                return self._refuse("oversized")
            # The announced bytes, then the frames in them (a sender that lied
            # about the length only loses its own frames).
            with trio.move_on_after(self.config.stream_timeout_s) as rest:
                buf = await _read_exactly(stream, total)
            if rest.cancelled_caught:
                return self._refuse("stream_timeout")
            while len(buf) >= 4:
                (n,) = _LEN.unpack_from(buf)
                if 4 + n > len(buf):
                    return self._refuse("truncated")
                node.receive_stream(bytes(buf[4 : 4 + n]), src, trio.current_time())
                del buf[: 4 + n]
                self.kick()
        except RemoteProtocolError:
            pass  # counted by the core
        except (trio.BrokenResourceError, _Short):
            self._refuse("truncated")
        finally:
            self._streams.discard(src)
            left = self._streams_by_ip[src[0]] - 1
            if left:
                self._streams_by_ip[src[0]] = left
            else:
                del self._streams_by_ip[src[0]]
            await trio.aclose_forcefully(stream)

    def _refuse(self, reason: str) -> None:
        assert self.node is not None
        self.node.counters[f"dropped_{reason}"] += 1
        self.node.counters["dropped"] += 1


class _Short(Exception):
    """The peer closed the stream before sending what it announced."""


async def _read_exactly(stream: trio.SocketStream, n: int) -> bytearray:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(65536, n - len(buf)))
        if not chunk:
            raise _Short
        buf += chunk
    return buf


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
