"""The trio runtime for the gossip core: a UDP socket for datagrams and a TCP
listener on the same port for bulk frames.

The core is fed `trio.current_time()` (monotonic); `unix_time()` converts an
event's time to wall-clock seconds for the application.

TCP framing: each connection carries frames of `u32 big-endian length` +
sealed envelope, each at most `max_stream_frame` bytes; a longer length
prefix closes the connection and counts as a drop.
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

from .config import GossipConfig
from .core import Datagram, GossipEvent, GossipNode, StreamFrame
from .crypto import Keyring
from .errors import LocalProtocolError
from .wire import Addr

log = logging.getLogger("rumor.gossip.transport")
_LEN = struct.Struct(">I")


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
        config: GossipConfig | None = None,
        keyring: Keyring | None = None,
        insecure: bool = False,
        generation: int | None = None,
        seed: int | None = None,
        on_events: Callable[[list[GossipEvent]], None] | None = None,
        setup: Callable[[GossipNode], None] | None = None,
    ) -> None:
        if keyring is None and not insecure and not is_loopback(bind[0]):
            raise LocalProtocolError(
                f"refusing to bind {bind[0]} without a keyring: gossip would be "
                "unauthenticated and in clear text (pass a keyring, or --insecure)"
            )
        self.name = name
        self.bind = bind
        self.seeds = seeds or []
        self.config = config or GossipConfig()
        self.keyring = keyring
        self.generation = generation if generation is not None else time.time_ns() // 1_000_000
        self.rng = random.Random(seed) if seed is not None else random.Random()
        self.on_events = on_events
        self.setup = setup
        self.node: GossipNode | None = None  # set once bound
        self.addr: Addr | None = None
        self._udp: trio.socket.SocketType | None = None
        self._raw: socket.socket
        self._nursery: trio.Nursery | None = None
        self._timer: trio.CancelScope | None = None
        self._clock_offset = time.time() - trio.current_time() if _in_trio() else 0.0

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
            # wait (a full buffer is loss, as on a wire); trio wraps it for receiving.
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
        udp = trio.socket.from_stdlib_socket(raw)
        self._raw = raw
        self._udp = udp
        self.addr = (host, bound_port)
        self.node = GossipNode(
            self.name,
            self.addr,
            rng=self.rng,
            now=trio.current_time(),
            generation=self.generation,
            config=self.config,
            keyring=self.keyring,
        )
        if self.setup is not None:
            self.setup(self.node)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._recv_loop)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(trio.serve_listeners, self._serve_stream, listeners)
                if self.seeds:
                    self.node.join(self.seeds, trio.current_time())
                    self.kick()
                task_status.started(self.addr)
        finally:
            udp.close()

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
        if self._timer is not None:
            self._timer.deadline = node.next_deadline()

    def _send_datagram(self, out: Datagram) -> None:
        try:
            self._raw.sendto(out.data, out.dst)
        except (OSError, ValueError, TypeError, OverflowError) as e:
            # An unreachable or unusable address (the wire layer admits IP
            # literals only, so this is a peer's bad data): never fatal.
            log.debug("send to %s failed: %s", out.dst, e)

    async def _send_frame(self, out: StreamFrame) -> None:
        try:
            with trio.move_on_after(5):
                stream = await trio.open_tcp_stream(*out.dst)
                async with stream:
                    await stream.send_all(_LEN.pack(len(out.data)) + out.data)
        except (OSError, ValueError, TypeError, OverflowError) as e:
            log.debug("stream to %s failed: %s", out.dst, e)

    async def _recv_loop(self) -> None:
        assert self._udp is not None and self.node is not None
        while True:
            try:
                data, src = await self._udp.recvfrom(65536)
            except OSError as e:  # e.g. ICMP port unreachable surfaced on Linux
                log.debug("recvfrom: %s", e)
                continue
            self.node.receive_datagram(data, (src[0], src[1]), trio.current_time())
            self.kick()

    async def _timer_loop(self) -> None:
        assert self.node is not None
        while True:
            with trio.CancelScope(deadline=self.node.next_deadline()) as scope:
                self._timer = scope
                await trio.sleep_forever()
            self._timer = None
            self.node.tick(trio.current_time())
            self.kick()

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        assert self.node is not None
        peer = stream.socket.getpeername()
        src = (peer[0], peer[1])
        limit = self.config.max_stream_frame
        buf = bytearray()
        try:
            with trio.move_on_after(30):
                async for chunk in stream:
                    buf += chunk
                    while len(buf) >= 4:
                        (n,) = _LEN.unpack_from(buf)
                        if n > limit:
                            self.node.counters["dropped_oversized"] += 1
                            self.node.counters["dropped"] += 1
                            return
                        if len(buf) < 4 + n:
                            break
                        frame = bytes(buf[4 : 4 + n])
                        del buf[: 4 + n]
                        self.node.receive_stream(frame, src, trio.current_time())
                        self.kick()
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
