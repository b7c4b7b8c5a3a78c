"""Run a `Scenario` through the simulated network and measure it.

Metrics (all from the nodes' own events, stamped with simulated time):
- dissemination of each update: the time until each other live node applies
  it; p50, p99 and max over every (update, node) pair, and rounds = time /
  interval;
- failure detection: for each killed node, the time until each live observer
  declares it dead;
- false suspicions and false deaths: a suspect/dead verdict about a node that
  was not crashed at that moment;
- messages and bytes per node per second; time to full convergence after each
  heal; wall time and simulated seconds per wall second.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gossip.core import EventType, GossipNode
from gossip.crypto import Keyring

from .network import HostModel, LinkModel, SimNetwork, bootstrap
from .scenario import Event, Scenario

SLICE = 0.1  # simulated seconds between scenario checks and samples


@dataclass
class _Update:
    writer: str
    key: str
    at: float


@dataclass
class Timeline:
    """Samples for plots."""

    t: list[float] = field(default_factory=list)
    bytes_per_node_per_s: list[float] = field(default_factory=list)
    informed: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)]


def run_scenario(
    scn: Scenario,
    progress: Callable[[float], None] | None = None,
    timeline: Timeline | None = None,
) -> dict[str, Any]:
    wall0 = time.perf_counter()
    config = scn.gossip_config()
    link = LinkModel(
        latency=scn.latency_ms / 1000,
        jitter=scn.jitter_ms / 1000,
        loss=scn.loss,
        duplicate=scn.duplicate,
    )
    keyring = Keyring.generate(random.Random(scn.seed)) if scn.encrypt else None
    host = None
    if scn.cores:
        host = HostModel(
            scn.cores,
            per_message=scn.cpu_us / 1e6,
            per_send=scn.send_us / 1e6,
            per_call=scn.call_us / 1e6,
            background=scn.background,
            wake=scn.wake_us / 1e6,
        )
    names = [f"node{i}" for i in range(scn.nodes)]
    net_kw: dict[str, Any] = dict(
        link=link, config=config, keyring=keyring, bandwidth=scn.bandwidth, host=host
    )
    # What the setup builds (N^2 member records) lives for the whole run: it is
    # made with the cyclic GC paused and frozen out of its collections before
    # the GC resumes (`gc.freeze` is O(1)). Resumed unfrozen, the GC's first
    # collections would walk all of it, for no garbage: 0.5 s of the 3 s setup
    # at N = 1,000. Handed back to the GC after the run.
    collecting = gc.isenabled()
    gc.disable()
    try:
        if scn.warm_start:
            net = bootstrap(scn.nodes, scn.seed, **net_kw)
        else:
            net = SimNetwork(scn.seed, **net_kw)
            net.add_node(names[0])
            for n in names[1:]:
                net.add_node(n, join=[names[0]])
        gc.freeze()
    finally:
        if collecting:
            gc.enable()
    rng = random.Random(f"{scn.seed}/scenario")
    start = net.now
    setup_wall = time.perf_counter() - wall0
    crashed: dict[str, list[list[float]]] = {n: [] for n in names}  # [t_down, t_up]
    paused: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    kills: list[tuple[str, float]] = []
    heals: list[float] = []
    # (start, end, grudges): verdicts across a partition are expected, not false.
    cuts: list[list[Any]] = []
    updates: list[_Update] = []
    pending = list(scn.events)
    if scn.updates_every > 0:
        t = 1.0
        while t < scn.duration:
            pending.append(Event(t, "update", {}))
            t += scn.updates_every
    pending.sort(key=lambda e: e.at)
    convergence_after_heal: list[float | None] = []
    awaiting_heal: float | None = None
    bytes_before = 0

    def live_names() -> list[str]:
        return [n for n in names if net.nodes[n].alive]

    def apply(ev: Event) -> None:
        nonlocal awaiting_heal
        p = ev.params
        node = p.get("node")
        if ev.action == "update":
            writer = node or rng.choice(live_names())
            key = f"u{len(updates)}"
            value = {"seq": len(updates), "pad": "x" * 64}
            update = _Update(writer, key, net.now)

            def change(node: GossipNode, now: float) -> None:
                # Timed from the write itself, as the daemon logs it before sending
                # (under the host model the write waits for a core).
                update.at = net.now
                node.set_key(key, value, now)

            net.local(writer, change)
            updates.append(update)
        elif ev.action == "kill":
            victim = node or rng.choice(live_names())
            if net.nodes[victim].alive:
                net.crash(victim)
                crashed[victim].append([net.now, math.inf])
                kills.append((victim, net.now))
        elif ev.action == "restart":
            if not net.nodes[node].alive:
                seeds = [n for n in live_names() if n != node][:3]
                net.restart(node, join=seeds)
                crashed[node][-1][1] = net.now
        elif ev.action == "pause":
            net.pause(node, p["duration"])
            paused[node].append((net.now, net.now + p["duration"]))
        elif ev.action == "partition":
            groups = p.get("groups")
            if groups is None:
                order = names[:]
                rng.shuffle(order)
                groups, i = [], 0
                for size in p["sizes"]:
                    groups.append(order[i : i + size])
                    i += size
            for gi, a in enumerate(groups):
                for b in groups[gi + 1 :]:
                    for x in a:
                        for y in b:
                            net.grudges.add((x, y))
                            if not p.get("oneway"):
                                net.grudges.add((y, x))
            cuts.append([net.now, math.inf, set(net.grudges)])
        elif ev.action == "heal":
            net.heal()
            for cut in cuts:
                cut[1] = min(cut[1], net.now)
            heals.append(net.now)
            awaiting_heal = net.now
        elif ev.action == "loss":
            net.link.loss = p["value"]
        elif ev.action == "latency":
            net.link.latency = p["ms"] / 1000
        elif ev.action == "skew":
            net.set_clock(node, p.get("offset", 0.0), p.get("drift", 0.0))

    end = start + scn.duration
    # The run makes short-lived objects by the million (messages, their
    # records, heap entries): at the default threshold (700) the cyclic GC's
    # young collections ran every few deliveries and took a tenth of the run
    # at N = 1,000, walking objects about to be freed by reference counting
    # anyway. Every 100,000 allocations it takes 1-2%; cycles are still found.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, *thresholds[1:])
    try:
        while net.now < end - 1e-9:
            while pending and start + pending[0].at <= net.now + 1e-9:
                apply(pending.pop(0))
            net.run_until(min(end, net.now + SLICE))
            if awaiting_heal is not None and net.converged():
                convergence_after_heal.append(round(net.now - awaiting_heal, 3))
                awaiting_heal = None
            if timeline is not None:
                total = sum(net.bytes_sent.values())
                timeline.t.append(net.now - start)
                timeline.bytes_per_node_per_s.append((total - bytes_before) / SLICE / scn.nodes)
                bytes_before = total
            if progress is not None:
                progress((net.now - start) / scn.duration)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    if awaiting_heal is not None:
        convergence_after_heal.append(None)

    def was_down(name: str, t: float) -> bool:
        return any(a <= t <= b for a, b in crashed[name]) or any(
            a <= t <= b + 1.0 for a, b in paused[name]
        )

    # -- dissemination -------------------------------------------------------
    applied: dict[tuple[str, str, str], float] = {}  # (observer, writer, key) -> time
    for n in names:
        for t, ev in net.nodes[n].events:
            if ev.type == EventType.UPDATE:
                for k in ev.keys:
                    applied.setdefault((n, ev.member, k), t)
    delivery: list[float] = []
    per_update = []
    undelivered = 0
    for u in updates:
        times = []
        for n in names:
            if n == u.writer or not net.nodes[n].alive or was_down(n, u.at):
                continue
            t = applied.get((n, u.writer, u.key))
            if t is None:
                undelivered += 1
                continue
            times.append(t - u.at)
            if timeline is not None:
                timeline.informed.setdefault(u.key, []).append((t - start, 1.0))
        delivery += times
        if times:
            per_update.append(
                {
                    "writer": u.writer,
                    "at_s": round(u.at - start, 3),
                    "max_s": round(max(times), 6),
                    "rounds": math.ceil(max(times) / scn.interval - 1e-9),
                }
            )

    # -- failure detection and false verdicts ---------------------------------
    detection: list[float] = []
    for victim, tk in kills:
        for n in names:
            if n == victim or not net.nodes[n].alive:
                continue
            for t, ev in net.nodes[n].events:
                if ev.type == EventType.DEAD and ev.member == victim and t >= tk:
                    detection.append(t - tk)
                    break
    # A member some nodes cannot reach is suspect to them, and their rumors
    # reach the nodes that can; neither verdict is a detector error.
    # A suspicion begun during a partition may run out up to one maximal
    # suspicion timeout after the heal, before the refutation arrives.
    grace = config.suspicion_max * max(1.0, math.log10(scn.nodes)) + 2 * config.probe_timeout
    cut_members = [(a, b, {x for pair in g for x in pair}) for a, b, g in cuts]

    def cut_off(observer: str, member: str, t: float) -> bool:
        return any(a <= t <= b + grace and member in g for a, b, g in cut_members)

    false_deaths = false_suspicions = partition_verdicts = 0
    for n in names:
        for t, ev in net.nodes[n].events:
            if ev.member == n or ev.type not in (EventType.DEAD, EventType.SUSPECT):
                continue
            if was_down(ev.member, t):
                continue
            if cut_off(n, ev.member, t):
                partition_verdicts += 1
            elif ev.type == EventType.DEAD:
                false_deaths += 1
            else:
                false_suspicions += 1

    sim_seconds = net.now - start
    wall = time.perf_counter() - wall0
    total_bytes = sum(net.bytes_sent.values())
    result: dict[str, Any] = {
        "nodes": scn.nodes,
        "seed": scn.seed,
        "sim_seconds": round(sim_seconds, 3),
        "wall_seconds": round(wall, 3),
        "setup_wall_seconds": round(setup_wall, 3),
        # Simulated seconds per wall second of the run itself (setup excluded).
        "sim_per_wall": round(sim_seconds / (wall - setup_wall), 2) if wall > setup_wall else None,
        "dissemination": {
            "updates": len(updates),
            "p50_s": round(_pct(delivery, 0.5), 6) if delivery else None,
            "p99_s": round(_pct(delivery, 0.99), 6) if delivery else None,
            "max_s": round(max(delivery), 6) if delivery else None,
            "rounds_max": max((u["rounds"] for u in per_update), default=None),
            "undelivered": undelivered,
            "per_update": per_update,
        },
        "false_deaths": false_deaths,
        "false_suspicions": false_suspicions,
        "verdicts_across_partitions": partition_verdicts,
        "bytes_per_node_per_s": round(total_bytes / scn.nodes / sim_seconds, 1),
        "messages": sum(net.messages_sent.values()),
        "messages_per_node_per_s": round(
            sum(net.messages_sent.values()) / scn.nodes / sim_seconds, 2
        ),
        "convergence_after_heal_s": convergence_after_heal,
        "converged": net.converged() and undelivered == 0,
        "trace_hash": net.trace_hash,
    }
    if kills:
        result["failure_detection"] = {
            "kills": len(kills),
            "p50_s": round(statistics.median(detection), 3) if detection else None,
            "max_s": round(max(detection), 3) if detection else None,
            "observers": len(detection),
        }
    return result
