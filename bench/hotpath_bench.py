"""The protocol's hot path: CPU per gossip message, per message type, sent and
received, as a runtime drives the core.

A warm-started, encrypted cluster of N nodes (sim.network.bootstrap: every
node knows every other) and one receiving node `b`. Each case builds real
sealed datagrams with the sender's own code path, timing that (the send
path), then feeds them to the receiver, timing `receive_datagram` plus what
both runtimes do after every datagram: `take_outgoing`, `take_events` and
`next_deadline` (the receive path; replies and forwards it sends are part of
its cost).

Cases:
- heartbeat: to the ring successor, state hashes equal (no reply);
- ping / ack: a light probe; the target answers with an ACK, the ACK is
  received by the prober;
- push first / push duplicate: a 100-byte change pushed by its writer (first
  delivery: applied and forwarded to `eager_fanout` peers), then the same
  change forwarded by a third node (already held: nothing to do);
- syn window: an anti-entropy SYN with a full digest window (24 entries),
  in sync, so no reply;
- syn pull / synack record: a node behind on one record asks for it (a
  one-entry SYN); the holder answers with a SYNACK carrying the record delta,
  which the asker applies and forwards.

    flock /work/bench.lock .venv/bin/python bench/hotpath_bench.py \
        [--nodes 100] [--count 2000] [--repeats 5] [--json] [--profile out/hotpath.txt] \
        [--gossip-opt KEY=VALUE ...]

`--gossip-opt` sets any gossip.config.GossipConfig field, as `rumor sim`'s
does: `--gossip-opt eager_push=false` measures a first push whose forward
waits for the next round instead of running inside the receive.

Reports microseconds per message, the best of the repeats (as timeit does:
on a shared machine the slower repeats measure the neighbours), and the
median; `push send` is per change (one encode, one seal per peer). The profile is
pyinstrument's text report of one more pass over every case.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gossip.config import GossipConfig
from gossip.core import Datagram, GossipNode
from gossip.crypto import Keyring
from gossip.wire import MsgType
from node.config import gossip_config, parse_pairs
from sim.network import SimNetwork, bootstrap


def drive(node: GossipNode, data: bytes, src: tuple[str, int], now: float) -> None:
    """What a runtime does with one datagram (gossip/transport.py, sim/network.py)."""
    node.receive_datagram(data, src, now)
    node.take_outgoing()
    node.take_events()
    node.next_deadline()


def sent(node: GossipNode) -> list[bytes]:
    return [o.data for o in node.take_outgoing() if isinstance(o, Datagram)]


@dataclass
class Cluster:
    net: SimNetwork
    a: GossipNode  # the sender
    b: GossipNode  # the receiver
    c: GossipNode  # a third node (forwards, writes)
    t: float

    def tick_time(self) -> float:
        self.t += 0.001
        return self.t


def make_cluster(n: int, seed: int, config: GossipConfig | None = None) -> Cluster:
    keyring = Keyring.generate(random.Random(seed))
    net = bootstrap(n, seed, keyring=keyring, config=config)
    nodes = [net.nodes[f"node{i}"].node for i in range(3)]
    for node in nodes:
        node.take_outgoing()
        node.take_events()
    return Cluster(net, *nodes, t=net.now + 1.0)


class Timer:
    """Accumulates the time of each timed step, per label; one mean per repeat."""

    def __init__(self) -> None:
        self.results: dict[str, list[float]] = {}
        self._sum: dict[str, float] = {}
        self._n: dict[str, int] = {}

    def time(self, label: str, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        self._sum[label] = self._sum.get(label, 0.0) + elapsed
        self._n[label] = self._n.get(label, 0) + 1

    def end_repeat(self) -> None:
        for label, total in self._sum.items():
            self.results.setdefault(label, []).append(total / self._n[label] * 1e6)
        self._sum.clear()
        self._n.clear()


def case_heartbeat(cl: Cluster, timer: Timer) -> None:
    a, b = cl.a, cl.b
    hb = a._msg(MsgType.HEARTBEAT, state_hash=a.state.hash)
    timer.time("heartbeat send", lambda: a._send(b.addr, hb, cl.tick_time()))
    (d,) = sent(a)
    timer.time("heartbeat receive", lambda: drive(b, d, a.addr, cl.tick_time()))


def case_ping_ack(cl: Cluster, timer: Timer) -> None:
    a, b = cl.a, cl.b
    timer.time("ping send", lambda: a._probe(b.name, cl.tick_time(), light=True))
    (ping,) = sent(a)
    timer.time("ping receive (answers ack)", lambda: drive_keep(b, ping, a.addr, cl))
    (ack,) = sent(b)
    timer.time("ack receive", lambda: drive(a, ack, b.addr, cl.tick_time()))


def case_push(cl: Cluster, timer: Timer, key: list[int]) -> None:
    """A 100-byte change: its writer's push, then a third node's forward of it."""
    a, b, c = cl.a, cl.b, cl.c
    key[0] += 1
    value = "v" * 97 + str(key[0] % 1000).rjust(3, "0")
    eager = a.config.eager_push
    label = "push send (1 encode, 5 seals)" if eager else "local write (push waits for a round)"
    timer.time(label, lambda: a.set_key("k", value, cl.tick_time()))
    if not eager:  # the round's push, built by the same code, to b and c only
        a._push_to([b.name, c.name], cl.tick_time())
    first = sent(a)[0]
    c.receive_datagram(first, a.addr, cl.tick_time())  # c forwards it
    if not eager:
        c._push_to([b.name], cl.tick_time())
    forwarded = sent(c)[0]
    timer.time(
        "push receive, first (applies, forwards)" if eager else "push receive, first (applies)",
        lambda: drive(b, first, a.addr, cl.tick_time()),
    )
    timer.time("push receive, duplicate", lambda: drive(b, forwarded, c.addr, cl.tick_time()))


def case_syn_window(cl: Cluster, timer: Timer) -> None:
    a, b = cl.a, cl.b
    timer.time("syn window send (24 entries)", lambda: a._send_syn(b.addr, cl.tick_time()))
    (syn,) = sent(a)
    timer.time("syn window receive (in sync)", lambda: drive(b, syn, a.addr, cl.tick_time()))


def case_pull(cl: Cluster, timer: Timer, key: list[int]) -> None:
    """b is behind on c's record, which a holds: b asks a (a one-entry SYN, as
    after a gap or an announcement), a answers with a SYNACK, b applies it."""
    a, b, c = cl.a, cl.b, cl.c
    key[0] += 1
    c.set_key("k", "w" * 97 + str(key[0] % 1000).rjust(3, "0"), cl.tick_time())
    if not c.config.eager_push:
        c._push_to([a.name], cl.tick_time())
    a.receive_datagram(sent(c)[0], c.addr, cl.tick_time())
    a.take_outgoing()
    rec = b.state.records[c.name]
    pull = b._msg(
        MsgType.SYN, state_hash=b.state.hash, digest=(rec.digest(),), lo=c.name, hi=c.name
    )
    b._send(a.addr, pull, cl.tick_time())
    (syn,) = sent(b)
    timer.time("syn pull receive (answers synack)", lambda: drive_keep(a, syn, b.addr, cl))
    (synack,) = sent(a)
    timer.time(
        "synack record receive (applies, forwards)",
        lambda: drive(b, synack, a.addr, cl.tick_time()),
    )


def drive_keep(node: GossipNode, data: bytes, src: tuple[str, int], cl: Cluster) -> None:
    """`drive`, but what it sends stays in the outbox for the next step."""
    node.receive_datagram(data, src, cl.tick_time())
    node.take_events()
    node.next_deadline()


def run_all(cl: Cluster, count: int, timer: Timer, key: list[int]) -> None:
    for _ in range(count):
        case_heartbeat(cl, timer)
        case_ping_ack(cl, timer)
        case_push(cl, timer, key)
        case_syn_window(cl, timer)
        case_pull(cl, timer, key)
    timer.end_repeat()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", help="write pyinstrument's text profile here")
    ap.add_argument(
        "--gossip-opt",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a gossip.config.GossipConfig field (repeatable), e.g. eager_push=false",
    )
    args = ap.parse_args(argv)
    opts = parse_pairs(args.gossip_opt, "gossip_opt")
    cl = make_cluster(args.nodes, args.seed, gossip_config(opts) if opts else None)
    timer = Timer()
    key = [0]
    run_all(cl, max(50, args.count // 10), Timer(), key)  # warm up
    for _ in range(args.repeats):
        gc.collect()
        run_all(cl, args.count, timer, key)
    rows = {label: round(min(v), 2) for label, v in timer.results.items()}
    medians = {label: round(statistics.median(v), 2) for label, v in timer.results.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "compiled": _compiled(),
        "nodes": args.nodes,
        "count": args.count,
        "repeats": args.repeats,
        "gossip_opts": opts,
        "us_per_message": rows,
        "us_per_message_median": medians,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        head = f"N={args.nodes}, {args.count} messages x {args.repeats}, compiled={_compiled()}"
        if opts:
            head += f", gossip {opts}"
        print(head)
        print(f"  {'us per message':45s} {'best':>8s} {'median':>8s}")
        for label, us in rows.items():
            print(f"  {label:45s} {us:8.2f} {medians[label]:8.2f}")
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
        with profiler:
            run_all(cl, args.count, Timer(), key)
        os.makedirs(os.path.dirname(os.path.abspath(args.profile)), exist_ok=True)
        with open(args.profile, "w") as f:
            f.write(profiler.output_text(unicode=True, color=False, show_all=False))
    return 0


def _compiled() -> bool:
    """True when the gossip core runs as a compiled (mypyc) extension."""
    import gossip.core

    return not str(gossip.core.__file__).endswith(".py")


if __name__ == "__main__":
    raise SystemExit(main())
