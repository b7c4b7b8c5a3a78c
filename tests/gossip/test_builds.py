"""The compiled (mypyc) and the pure-Python builds of the core speak the same
bytes and run the same simulations (compiled_build.py).

Each build runs in its own interpreter (the build is chosen at import, by
RUMOR_PURE), prints a digest of every encoded message type and of a seeded
run's sealed datagrams, and a simulation's trace hash; the two must match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import compiled_build

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import hashlib, json, random
import compiled_build, gossip.core
from gossip.wire import (Announce, DigestEntry, KeyUpdate, Message, MsgType, NodeDelta, Rumor,
                         Status, decode_message, encode_message)
from gossip.crypto import Keyring
from sim.network import LinkModel, bootstrap
from sim.runner import run_scenario
from sim.scenario import Event, Scenario

A = ("10.0.0.1", 7000)
r = Rumor("n1", 3, 2, Status.SUSPECT, A, ("n2", "n3"))
ups = (KeyUpdate("k", 5, {"x": [1, 2.5, None]}), KeyUpdate("z", 6, None, True))
d = NodeDelta("n1", 3, A, 4, ups, False, 2)
msgs = [
    Message(MsgType.HEARTBEAT, "a", 1, A, state_hash=2**63, rumors=(r,), wall_ms=17),
    Message(MsgType.PING, "a", 1, A, seq=9, target="b", state_hash=5, target_gen=4),
    Message(MsgType.ACK, "a", 1, A, seq=9, state_hash=5),
    Message(MsgType.NACK, "a", 1, A, seq=9),
    Message(MsgType.PING_REQ, "a", 1, A, seq=9, target="b", target_addr=A, target_gen=4),
    Message(MsgType.SYN, "a", 1, A, state_hash=1, digest=(DigestEntry("n", 1, 2),), lo="a",
            hi=None, crdt_hashes=(("c", 7),)),
    Message(MsgType.SYNACK, "a", 1, A, digest=(DigestEntry("n", 1, 2),), deltas=(d,),
            crdts=(("c", b"\x00\x01"),), announces=(Announce(DigestEntry("m", 2, 3), A),),
            rumors=(r,)),
    Message(MsgType.ACK2, "a", 1, A, deltas=(d,)),
    Message(MsgType.PUSH, "a", 1, A, deltas=(d,), rumors=(r, r)),
]
wire = hashlib.sha256()
for m in msgs:
    data = encode_message(m)
    assert decode_message(data, 1 << 20) == m
    wire.update(data)

# Every byte of every sealed datagram and frame a seeded cluster delivers.
sealed = hashlib.sha256()
net = bootstrap(8, 3, keyring=Keyring.generate(random.Random(3)), link=LinkModel(loss=0.1))
net.on_deliver = lambda dst, out: sealed.update(out.data)
net.local("node1", lambda node, now: node.set_key("k", "v" * 100, now))
net.run_for(2)
net.crash("node2")
net.run_for(8)

scn = Scenario(nodes=12, duration=12, loss=0.1, seed=5,
               events=(Event(4, "kill", {"node": "node3"}), Event(6, "update", {})))
result = run_scenario(scn)
print(json.dumps({
    "compiled": compiled_build.is_compiled(gossip.core),
    "wire": wire.hexdigest(),
    "sealed": sealed.hexdigest(),
    "trace": result["trace_hash"],
    "messages": result["messages"],
}))
"""


def _run(pure: bool) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "RUMOR_PURE"}
    if pure:
        env["RUMOR_PURE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _compiled_build_present() -> bool:
    return (compiled_build.BUILD / "gossip" / compiled_build.MANIFEST).exists()


@pytest.mark.skipif(
    not _compiled_build_present(),
    reason="no compiled build here (no C compiler, or `make compiled` not run): nothing to compare",
)
def test_compiled_and_pure_builds_send_the_same_bytes_and_run_the_same_traces() -> None:
    pure, compiled = _run(pure=True), _run(pure=False)
    assert pure["compiled"] is False
    assert compiled["compiled"] is True, "a present build must be current: run `make compiled`"
    assert compiled["wire"] == pure["wire"]
    assert compiled["sealed"] == pure["sealed"]
    assert compiled["trace"] == pure["trace"]
    assert compiled["messages"] == pure["messages"]


def test_pure_build_is_chosen_by_the_environment() -> None:
    assert _run(pure=True)["compiled"] is False
