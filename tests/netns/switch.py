"""A userspace Ethernet switch between network namespaces, with netem-style faults.

    python -m tests.netns.switch NAMESPACE... --host-ip 10.77.0.254/24

One TAP device per namespace is created here, moved into its namespace (the
file descriptor stays with this process), and given 10.77.0.<i+1>/24; one more
TAP stays in this namespace for the test itself.  Frames between the
namespaces' ports then go through this process, which applies, per frame:

* loss (probability), delay with jitter (uniform in delay ± jitter; frames may
  reorder, as with netem), and
* partitions: frames between ports in different groups are dropped.

The host port is never impaired or partitioned: it is the test's observer.
Commands, one per line on stdin:

    impair LOSS DELAY_S JITTER_S      e.g. `impair 0.2 0.05 0.02`
    partition 0,1 2,3,4               groups of namespace indices
    heal                              one group again, no impairment
    quit

Why not `tc netem`: the kernel this project's CI runs on has no sch_netem
("Specified qdisc kind is unknown"), so the same faults are applied here, in
one place, for every kernel.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import random
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Switch:
    def __init__(self, namespaces: list[str], host_ip: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fds: list[int] = []  # port i = namespace i; the last port is the host
        tag = os.getpid() % 100000
        for i, ns in enumerate(namespaces):
            name = f"rt{tag}n{i}"
            fd = open_tap(name)
            sh("ip", "link", "set", name, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"10.77.0.{i + 1}/24", "dev", name)
            sh("ip", "-n", ns, "link", "set", name, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.fds.append(fd)
        self.host_name = f"rt{tag}h"
        self.fds.append(open_tap(self.host_name))
        sh("ip", "addr", "add", host_ip, "dev", self.host_name)
        sh("ip", "link", "set", self.host_name, "up")
        self.host = len(self.fds) - 1
        self.port_of = {fd: i for i, fd in enumerate(self.fds)}
        self.macs: dict[bytes, int] = {}
        self.group = [0] * len(self.fds)
        self.loss = self.delay = self.jitter = 0.0
        self.queue: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.counts = {"forwarded": 0, "lost": 0, "cut": 0}

    def command(self, line: str) -> bool:
        parts = line.split()
        if not parts:
            return True
        if parts[0] == "quit":
            return False
        if parts[0] == "impair":
            self.loss, self.delay, self.jitter = (float(x) for x in parts[1:4])
        elif parts[0] == "partition":
            for g, members in enumerate(parts[1:]):
                for i in members.split(","):
                    self.group[int(i)] = g
        elif parts[0] == "heal":
            self.group = [0] * len(self.fds)
            self.loss = self.delay = self.jitter = 0.0
        print(f"ok {line.strip()}", flush=True)
        return True

    def deliver(self, src: int, dst: int, frame: bytes, now: float) -> None:
        if src != self.host and dst != self.host:
            if self.group[src] != self.group[dst]:
                self.counts["cut"] += 1
                return
            if self.loss and self.rng.random() < self.loss:
                self.counts["lost"] += 1
                return
            if self.delay or self.jitter:
                d = max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
                self.seq += 1
                heapq.heappush(self.queue, (now + d, self.seq, dst, frame))
                return
        self.write(dst, frame)

    def write(self, dst: int, frame: bytes) -> None:
        try:
            os.write(self.fds[dst], frame)
            self.counts["forwarded"] += 1
        except OSError:  # the interface is down or its queue is full: a lost frame
            self.counts["lost"] += 1

    def on_frame(self, src: int, frame: bytes, now: float) -> None:
        if len(frame) < 14:
            return
        dst_mac, src_mac = frame[0:6], frame[6:12]
        self.macs[src_mac] = src
        dst = self.macs.get(dst_mac)
        if dst is None or dst_mac[0] & 1:  # broadcast, multicast or unknown: flood
            for port in range(len(self.fds)):
                if port != src:
                    self.deliver(src, port, frame, now)
        elif dst != src:
            self.deliver(src, dst, frame, now)

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        buf = b""
        print("ready", flush=True)
        while True:
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now:
                _, _, dst, frame = heapq.heappop(self.queue)
                self.write(dst, frame)
            timeout = max(0.0, self.queue[0][0] - now) if self.queue else 0.5
            ready, _, _ = select.select([*self.fds, stdin], [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                if fd == stdin:
                    chunk = os.read(stdin, 4096)
                    if not chunk:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if not self.command(line.decode()):
                            return
                    continue
                for _ in range(64):  # drain a burst
                    try:
                        frame = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    self.on_frame(self.port_of[fd], frame, now)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("namespaces", nargs="+")
    ap.add_argument("--host-ip", default="10.77.0.254/24")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    switch = Switch(args.namespaces, args.host_ip, args.seed)
    try:
        switch.run()
    finally:
        print(f"counts {switch.counts}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
