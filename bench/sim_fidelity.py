"""Does `rumor sim` predict what real daemons do?  Loopback against the simulator.

    .venv/bin/python bench/sim_fidelity.py                  # N = 10 and 40
    .venv/bin/python bench/sim_fidelity.py --nodes 10 --trials 60 --json

1. Calibrate the simulator's host model (sim.network.HostModel) on 5 real
   daemons only (`calibrate`). Measured: CPU per gossip message (all daemons'
   CPU over spaced tag changes less their CPU over as many PUTs that change
   nothing, interleaved so idle CPU cancels, divided by the datagrams the
   changes caused), the writer's own work for the PUT after its change, and
   idle CPU that idle messages do not explain. Fitted to the 5 daemons' own
   dissemination (the 1st..4th peer's median delay): the split of the message
   cost between receiving and sending, and an idle core's wake-up time.
2. Measure N real daemons on loopback: `--trials` tag changes `--spacing` s
   apart at random nodes (each peer's own `member-update` log time less the
   origin's own `local-update` time, read from the logs afterwards), and
   `--kills` SIGKILLs (each peer's `member-dead` time less the kill).
3. Run the same scenario through the simulator (`sim.runner.run_scenario`, as
   `rumor sim --scenario` does) over `--seeds` seeds with the calibrated
   model, and compare dissemination p50 (every peer of every change), max
   (median over changes of the slowest peer) and detection (slowest
   observer, median over kills). The target is within ±20%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, gossip_counters, say  # noqa: E402
from bench.serf_compare import RumorCluster  # noqa: E402
from gossip.config import GossipConfig  # noqa: E402
from gossip.core import GossipNode  # noqa: E402
from sim.network import HostModel, LinkModel, bootstrap  # noqa: E402
from sim.runner import run_scenario  # noqa: E402
from sim.scenario import Event, Scenario  # noqa: E402

#: Loopback's own one-way delay: tens of microseconds; the wake-up and the
#: Python on either end are in the CPU costs.
LATENCY_MS = 0.02


def wait_quiet(c: RumorCluster, quiet_s: float, limit: float = 180) -> None:
    t0, since, seen = time.time(), time.time(), -1
    while time.time() - since < quiet_s and time.time() - t0 < limit:
        c.poll_events()
        noisy = sum(ev.kind in ("suspect", "dead") for evs in c.events.values() for ev in evs)
        if noisy != seen:
            seen, since = noisy, time.time()
        time.sleep(0.3)


def counter(c: RumorCluster, i: int, key: str) -> float:
    return gossip_counters(httpx.get(f"{c.http(i)}/metrics", timeout=5).text).get(key, 0.0)


class Meter:
    """All daemons' CPU seconds (read from /proc, costing them nothing) and
    gossip datagrams delivered (read over HTTP, so never inside a CPU window),
    with their idle rates."""

    def __init__(self, c: RumorCluster, idle_s: float = 10.0) -> None:
        self.c = c
        self.pids = [p.pid for p in c.procs.values()]
        m0 = self.messages()
        t0, k0 = time.time(), self.cpu()
        time.sleep(idle_s)
        took = time.time() - t0
        self.idle_cpu = (self.cpu() - k0) / took
        self.idle_messages = (self.messages() - m0) / took

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def messages(self) -> float:
        return sum(counter(self.c, i, "datagrams_in") for i in range(self.c.n))


def paired_changes(
    c: RumorCluster, meter: Meter, count: int, spacing: float, rng: random.Random
) -> dict[str, Any]:
    """`count` pairs of PUTs at random nodes but r0, each followed by `spacing`
    s: one that writes the value already there (the HTTP exchange alone), one
    that changes a tag. Windows of both kinds are equally long and interleaved,
    so the daemons' idle CPU cancels out of their difference."""
    values = {}
    for i in range(1, c.n):
        values[i] = "start"
        httpx.put(f"{c.http(i)}/v1/node/tags", json={"trial": "start"}, timeout=5)
    time.sleep(1.0)
    cpu = {False: 0.0, True: 0.0}
    seconds = {False: 0.0, True: 0.0}
    http_cpu, http_window = 0.0, 0.05
    puts, answered = [], []
    m0, t_start = meter.messages(), time.time()
    for k in range(count):
        for change in (False, True):
            i = rng.randrange(1, c.n)
            if change:
                values[i] = str(k)
            t0, k0 = time.time(), meter.cpu()
            httpx.put(f"{c.http(i)}/v1/node/tags", json={"trial": values[i]}, timeout=5)
            if change:
                puts.append((c.node_name(i), t0))
            else:  # the HTTP exchange's own CPU, in a short window
                answered.append((c.node_name(i), t0, time.time()))
                time.sleep(max(0.0, http_window - (time.time() - t0)))
                http_cpu += meter.cpu() - k0 - meter.idle_cpu * (time.time() - t0)
            time.sleep(max(0.0, spacing - (time.time() - t0)))
            cpu[change] += meter.cpu() - k0
            seconds[change] += time.time() - t0
    messages = meter.messages() - m0 - meter.idle_messages * (time.time() - t_start)
    change_cpu = cpu[True] - cpu[False] - meter.idle_cpu * (seconds[True] - seconds[False])
    # After its change, the node still answers the PUT: from its own log line
    # of the write to the client holding the answer (a quiet host, so this
    # wall time is that work's CPU on the critical path).
    c.poll_events()
    after = []
    for node, t0, t_answer in answered:
        logged = c.first_event(node, "update", node, t0)
        if 0 <= t_answer - logged < spacing:
            after.append(t_answer - logged)
    return {
        "call_us": statistics.median(after) * 1e6,
        "message_us": change_cpu / max(1.0, messages) * 1e6,
        "messages_per_change": messages / count,
        "put_us": http_cpu / count * 1e6,
        "puts": puts,
    }


def tag_changes(
    c: RumorCluster, count: int, spacing: float, rng: random.Random, change: bool = True
) -> list[tuple[str, float]]:
    """`count` PUTs of a tag, `spacing` s apart, each at a random node but r0.
    With `change` false every PUT writes the value already there (the HTTP
    cost alone). Returns (origin, time of the PUT)."""
    puts = []
    for k in range(count):
        i = rng.randrange(1, c.n)
        t0 = time.time()
        value = str(k) if change else "same"
        httpx.put(f"{c.http(i)}/v1/node/tags", json={"trial": value}, timeout=5)
        puts.append((c.node_name(i), t0))
        time.sleep(max(0.0, spacing - (time.time() - t0)))
    return puts


def delays(c: RumorCluster, puts: list[tuple[str, float]], window: float) -> list[list[float]]:
    """Per change: each peer's own `member-update` time less the origin's own
    `local-update` time, read from the daemons' logs afterwards (no polling
    while the changes spread)."""
    c.poll_events()
    out = []
    for origin, t0 in puts:
        own = c.first_event(origin, "update", origin, t0, "tag:trial")
        if own < 0:
            continue
        got = []
        for p in c.names():
            if p == origin:
                continue
            t = c.first_event(p, "update", origin, own, "tag:trial")
            if 0 <= t - own < window:
                got.append(t - own)
        if len(got) == c.n - 1:
            out.append(got)
    return out


def summarize(per_change: list[list[float]]) -> dict[str, float]:
    return {
        "p50_s": statistics.median(d for ds in per_change for d in ds),
        "max_s": statistics.median(max(ds) for ds in per_change),
    }


def by_rank(per_change: list[list[float]]) -> list[float]:
    """The median, over changes, of the k-th peer's delay: the cascade's shape."""
    ordered = [sorted(ds) for ds in per_change]
    return [statistics.median(ds[k] for ds in ordered) for k in range(len(ordered[0]))]


def simulated_ranks(n: int, model: HostModel, changes: int = 10, seeds: int = 3) -> list[float]:
    """`by_rank` for spaced changes at random nodes of a simulated cluster."""
    per_change = []
    for seed in range(1, seeds + 1):
        net = bootstrap(
            n, seed, link=LinkModel(LATENCY_MS / 1e3, LATENCY_MS / 1e3),
            config=GossipConfig(interval=0.2, fanout=3), host=model,
        )  # fmt: skip
        net.run_for(2.0)
        rng = random.Random(seed)
        for k in range(changes):
            writer, at = f"node{rng.randrange(n)}", [0.0]

            def change(node: GossipNode, now: float, k: int = k, at: list[float] = at) -> None:
                at[0] = now  # no clock skew here: the network's time
                node.set_key(f"k{k}", k, now)

            net.local(writer, change)
            net.run_for(0.4)
            got = [
                next(t for t, ev in sn.events if ev.member == writer and f"k{k}" in ev.keys)
                for sn in net.nodes.values()
                if sn.name != writer
            ]
            per_change.append([t - at[0] for t in got])
    return by_rank(per_change)


def calibrate(tmp: Path, changes: int, spacing: float, say: Any, n: int = 5) -> dict[str, Any]:
    """The host model's costs, from 5 real daemons only.

    Measured: all daemons' CPU over `changes` spaced tag changes less their
    CPU over as many PUTs that change nothing (`paired_changes`), divided by
    the datagrams the changes caused. Each datagram is sent once and received
    once, so this is the cost of both ends: `cpu_us + send_us`.

    Also measured: what the writer still does for the PUT after its change
    (`call_us`) and the idle CPU that idle messages do not explain
    (`background`).

    Fitted, on these 5 daemons' own dissemination (the median delay of the
    first, second, ... peer to hear a change; least squares on the logs, over
    a grid): how the message cost splits between the receiving and the sending
    end, and how long an idle core takes to start (`wake_us`). N = 10 and 40
    are predicted, never fitted."""
    c = RumorCluster(n, tmp / "cal")
    c.work.mkdir()
    rng = random.Random(5)
    try:
        c.start(0.2, 3)
        c.wait_converged(60)
        wait_quiet(c, 2)
        meter = Meter(c)
        say(f"calibration: {changes} pairs of PUTs, one that changes nothing and one that does")
        got = paired_changes(c, meter, changes, spacing, rng)
        per_change = delays(c, got["puts"], spacing)
        real = summarize(per_change)
    finally:
        c.stop()
    message_us, put_us = got["message_us"], got["put_us"]
    # Idle CPU that idle gossip messages do not explain: timers and the like.
    background = max(0.0, meter.idle_cpu - meter.idle_messages * message_us / 1e6) / n
    cal: dict[str, Any] = {
        "nodes": n,
        "message_us": round(message_us, 1),
        "messages_per_change": round(got["messages_per_change"], 1),
        "put_us": round(put_us, 1),
        "idle_cores": round(meter.idle_cpu, 4),
        "background": round(background, 5),
        "loopback_p50_s": round(real["p50_s"], 6),
        "loopback_max_s": round(real["max_s"], 6),
        "loopback_by_rank_s": [round(t, 6) for t in by_rank(per_change)],
    }
    say(f"calibration: {cal}; fitting the split")
    real_ranks = by_rank(per_change)
    call_us = got["call_us"]
    best: tuple[float, float, float] | None = None
    for i in range(21):
        share = i / 20
        for wake_us in range(0, 301, 25):
            model = HostModel(
                os.cpu_count() or 2,
                per_message=message_us * (1 - share) / 1e6,
                per_send=message_us * share / 1e6,
                per_call=call_us / 1e6,
                background=background,
                wake=wake_us / 1e6,
            )
            ranks = simulated_ranks(n, model)
            err = sum(math.log(s / r) ** 2 for s, r in zip(ranks, real_ranks, strict=True))
            if best is None or err < best[0]:
                best = (err, share, wake_us)
    assert best is not None
    _, share, wake_us = best
    cal["send_share"] = share
    cal["cpu_us"] = round(message_us * (1 - share), 1)
    cal["send_us"] = round(message_us * share, 1)
    cal["call_us"] = round(call_us, 1)
    cal["wake_us"] = wake_us
    cal["latency_ms"] = LATENCY_MS
    return cal


def measure(
    n: int, tmp: Path, trials: int, spacing: float, kills: int, rng: random.Random, say: Any
) -> dict:
    c = RumorCluster(n, tmp / f"n{n}")
    c.work.mkdir()
    try:
        say(f"loopback N={n}: starting")
        c.start(0.2, 3)
        if not c.wait_converged(180):
            raise RuntimeError(f"N={n} did not converge")
        wait_quiet(c, 5)
        per_change = delays(c, tag_changes(c, trials, spacing, rng), spacing)
        det = []
        victims = rng.sample(range(1, n), kills)
        for v in victims:
            name = c.node_name(v)
            t0 = time.time()
            c.kill(name)
            got = c.wait_events("dead", name, t0, timeout=30)
            if got:
                det.append(max(got.values()) - t0)
            time.sleep(3.0)
        return {
            **summarize(per_change),
            "detection_s": statistics.median(det) if det else None,
            "trials": len(per_change),
            "kills": len(det),
        }
    finally:
        c.stop()


def simulate(n: int, model: dict[str, float], trials: int, kills: int, seeds: int) -> dict:
    """The measured scenario through `run_scenario`; `model` holds the
    Scenario's host-model fields (cpu_us, send_us, call_us, background,
    wake_us) and latency_ms."""
    delays, maxima, det = [], [], []
    for seed in range(1, seeds + 1):
        events = [Event(2.0 + 1.0 * k, "update", {}) for k in range(trials)]
        t = 3.0 + trials
        for _ in range(kills):
            events.append(Event(t, "kill", {}))
            t += 6.0
        host = {k: v for k, v in model.items() if k != "latency_ms"}
        scn = Scenario(
            nodes=n, seed=seed, duration=t + 6, latency_ms=model["latency_ms"],
            jitter_ms=model["latency_ms"], cores=os.cpu_count() or 2, updates_every=0,
            events=tuple(events), **host,
        )  # fmt: skip
        r = run_scenario(scn)
        maxima += [u["max_s"] for u in r["dissemination"]["per_update"]]
        delays.append(r["dissemination"]["p50_s"])
        if "failure_detection" in r:
            det.append(r["failure_detection"]["max_s"])
    return {
        "p50_s": statistics.median(delays),
        "max_s": statistics.median(maxima),
        "detection_s": statistics.median(det) if det else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="10,40")
    ap.add_argument("--trials", type=int, default=30, help="tag changes per N")
    ap.add_argument("--spacing", type=float, default=0.4, help="seconds between changes")
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs per N")
    ap.add_argument("--seeds", type=int, default=5, help="simulator seeds per N")
    ap.add_argument("--calibration-changes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.nodes.split(",") if x]

    rng = random.Random(args.seed)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
    }
    with tempfile.TemporaryDirectory(prefix="rumor-fidelity-") as tmp:
        cal = calibrate(Path(tmp), args.calibration_changes, args.spacing, say)
        report["calibration"] = cal
        say(f"calibration: {cal}")
        keys = ("cpu_us", "send_us", "call_us", "background", "wake_us", "latency_ms")
        model = {k: cal[k] for k in keys}
        say(
            f"model: rumor sim --cores {os.cpu_count()} --cpu-us {cal['cpu_us']} "
            f"--send-us {cal['send_us']} --call-us {cal['call_us']} "
            f"--background {cal['background']} --wake-us {cal['wake_us']} "
            f"--latency-ms {LATENCY_MS} --jitter-ms {LATENCY_MS}"
        )
        rows = []
        for n in sizes:
            real = measure(n, Path(tmp), args.trials, args.spacing, args.kills, rng, say)
            say(f"simulating N={n}")
            sim = simulate(n, model, args.trials, args.kills, args.seeds)
            row: dict[str, Any] = {"nodes": n, "loopback": {}, "sim": {}, "sim_over_loopback": {}}
            for key in ("p50_s", "max_s", "detection_s"):
                row["loopback"][key] = round(real[key], 6)
                row["sim"][key] = round(sim[key], 6)
                row["sim_over_loopback"][key] = round(sim[key] / real[key], 3)
            row["sim"]["model"] = {"cores": os.cpu_count(), **model}
            row["within_20pct"] = all(0.8 <= v <= 1.2 for v in row["sim_over_loopback"].values())
            rows.append(row)
            say(f"N={n}: {row['sim_over_loopback']}")
        report["rows"] = rows
    print(json.dumps(report, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
