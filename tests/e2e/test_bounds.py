"""One peer or one client cannot exhaust a node (issue #13, items 4 and 5):
hostile gossip streams and stalled HTTP bodies leave it gossiping and serving."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import gossip_counters
from gossip.crypto import Keyring
from node.localcluster import LocalCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    keyring = tmp_path / "keyring.json"
    keyring.write_text(Keyring.generate(random.Random(7)).dump())
    with LocalCluster(tmp_path, keyring=keyring) as c:
        yield c


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _settled_rss_mib(pid: int, timeout: float = 30.0) -> float:
    """RSS once two reads 0.5 s apart agree within 1 MiB (allocation settled)."""
    last = _rss_mib(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _rss_mib(pid)
        if abs(now - last) < 1:
            return now
        last = now
    return last


def _counter(c: LocalCluster, name: str, key: str) -> float:
    return gossip_counters(httpx.get(c.url(name, "/metrics"), timeout=5).text).get(key, 0.0)


def _host_port(hp: str) -> tuple[str, int]:
    host, _, port = hp.rpartition(":")
    return host, int(port)


def test_a_thousand_hostile_gossip_streams_leave_the_node_whole(cluster: LocalCluster) -> None:
    c = cluster
    a = c.start("a")
    c.start("b", join=["a"])
    c.wait_for(lambda: c.alive_members("b") == {"a", "b"}, 30, "b to see a")
    before = _settled_rss_mib(a.pid)
    dropped_before = _counter(c, "a", "dropped")
    junk = random.Random(1).randbytes(256 * 1024)
    socks: list[socket.socket] = []
    try:
        for i in range(1000):
            s = socket.create_connection(_host_port(a.gossip), timeout=5)
            socks.append(s)  # all held open: a connection closed frees its buffer
            s.setblocking(False)
            # A length prefix of 16 MiB, then junk: before, each connection
            # could buffer up to 16 MiB for 30 s before anything was checked.
            with contextlib.suppress(OSError):  # refused at once: as it should be
                s.send(struct.pack(">I", 16 * 1024 * 1024 - 1) + junk)
            if i % 100 == 99:
                assert c.nodes["a"].running()
        # Every hostile stream refused and counted, before RSS is read.
        c.wait_for(
            lambda: _counter(c, "a", "dropped") - dropped_before >= 1000,
            60,
            "a to refuse the 1,000 streams",
        )
        grown = _settled_rss_mib(a.pid) - before
    finally:
        for s in socks:
            s.close()
    assert grown < 64, f"RSS grew {grown:.1f} MiB under 1,000 hostile streams"
    # Still gossiping and serving.
    r = httpx.get(c.url("a", "/v2/health/ready"), timeout=5)
    assert r.status_code == 200
    httpx.put(c.url("a", "/v1/node/tags"), json={"after": "attack"}, timeout=10)
    c.wait_for(lambda: c.member("b", "a")["tags"] == {"after": "attack"}, 20, "a's news to reach b")
    counters = httpx.get(c.url("a", "/metrics"), timeout=5).text
    assert 'counter="dropped_oversized"' in counters


def test_stalled_bodies_do_not_starve_health_checks(cluster: LocalCluster) -> None:
    """Clients stall mid-body, more of them than a node limited to 64
    descriptors can hold (the issue saw 60 do it)."""
    c = cluster
    c.start("a", nofile=64, extra=["--http-body-timeout", "1"])
    url = c.url("a", "/v2/health/live")
    host, port = _host_port(c.http("a"))
    stalled = []
    try:
        for _ in range(200):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"PUT /v1/node/tags HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{")
            stalled.append(s)
        t0 = time.monotonic()
        for _ in range(5):
            assert httpx.get(url, timeout=5).status_code == 200
            assert httpx.get(c.url("a", "/v2/health/ready"), timeout=5).status_code == 200
        assert time.monotonic() - t0 < 10
    finally:
        for s in stalled:
            s.close()
    assert c.nodes["a"].running()


def test_a_stalled_body_gets_408_within_its_deadline(cluster: LocalCluster) -> None:
    c = cluster
    c.start("a", extra=["--http-body-timeout", "1"])
    host, port = _host_port(c.http("a"))
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"PUT /v1/node/tags HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        t0 = time.monotonic()
        answer = b""
        s.settimeout(5)
        with contextlib.suppress(TimeoutError):
            while chunk := s.recv(4096):
                answer += chunk
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert took < 3  # the 1 s deadline with headroom, not the 75 s keep-alive
