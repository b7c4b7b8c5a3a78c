"""How long decentralized placement takes to converge, on the real gossip core.

N simulated nodes register the catalog (ORMap) and replica targets (LWWMap)
CRDTs, as daemons do. One node adds `models` models with `replicas` replicas
each; every node then computes node.cluster.placement from its own view and
runs a node.cluster.placement.Placer (the daemon's hysteresis), "loading" (instantly)
what it is told to. Measured: the time until every model is held by exactly
its assigned nodes, after the change and again after one holder crashes.
"""

from __future__ import annotations

import random
from typing import Any

from crdt import HLC, LWWMap, LWWRegister, ORMap
from gossip.crypto import Keyring
from node.cluster.placement import Placer, assign, placement
from node.cluster.view import GossipView

from .network import LinkModel, SimNetwork, bootstrap

STEP = 0.05


def _view(net: SimNetwork, name: str) -> dict[str, list[str]]:
    """What node `name` computes, with the daemon's code (node.cluster.placement
    over node.cluster.view.GossipView of its gossip node)."""
    node = net.nodes[name].node
    devices = GossipView(node).devices()
    return placement(node.crdt("catalog").value, node.crdt("replicas").value, devices)


def run_placement(
    nodes: int = 20,
    models: int = 5,
    replicas: int = 2,
    seed: int = 1,
    hold_load: float = 2.0,
    hold_unload: float = 30.0,
    limit: float = 120.0,
) -> dict[str, Any]:
    net = bootstrap(
        nodes,
        seed,
        link=LinkModel(latency=0.001, jitter=0.0005),
        keyring=Keyring.generate(random.Random(seed)),
    )
    for sn in net.nodes.values():
        sn.node.register_crdt("catalog", ORMap(LWWRegister))
        sn.node.register_crdt("replicas", LWWMap())
    placers = {n: Placer(hold_load, hold_unload) for n in net.nodes}
    held: dict[str, set[str]] = {n: set() for n in net.nodes}
    net.run_for(1.0)

    writer = net.nodes["node0"]
    hlc = HLC()
    t0 = net.now
    for i in range(models):
        model, ts = f"model{i}", hlc.now(net.now)
        catalog: ORMap = writer.node.crdt("catalog")  # type: ignore[assignment]
        spec = {"source": f"builtin:model{i}"}
        delta = catalog.update("node0", model, lambda reg, ts=ts, v=spec: reg.set("node0", v, ts))
        writer.node.update_crdt("catalog", delta, net.now)
        reps: LWWMap = writer.node.crdt("replicas")  # type: ignore[assignment]
        writer.node.update_crdt("replicas", reps.set("node0", model, replicas, ts), net.now)
    net.flush(writer)

    def step() -> None:
        for name, sn in net.nodes.items():
            if not sn.alive:
                continue
            mine = {m for m, ns in _view(net, name).items() if name in ns}
            load, unload = placers[name].step(net.now, mine, held[name])
            held[name] = (held[name] | load) - unload

    def settled(truth: dict[str, list[str]]) -> bool:
        for m, ns in truth.items():
            holders = {n for n, sn in net.nodes.items() if sn.alive and m in held[n]}
            if holders != set(ns):
                return False
        return True

    def until(truth: dict[str, list[str]]) -> tuple[float | None, float | None]:
        start, agreed = net.now, None
        while net.now - start < limit:
            net.run_for(STEP)
            step()
            live = [n for n, sn in net.nodes.items() if sn.alive]
            if agreed is None and all(_view(net, n) == truth for n in live):
                agreed = net.now - start
            if settled(truth):
                return agreed, net.now - start
        return agreed, None

    alive = {n: 1.0 for n in net.nodes}
    truth = assign({f"model{i}": replicas for i in range(models)}, alive)
    views_agree, placed = until(truth)

    victim = truth["model0"][0]
    net.crash(victim)
    del alive[victim]
    truth2 = assign({f"model{i}": replicas for i in range(models)}, alive)
    moved = sum(len(set(truth2[m]) - set(truth[m])) for m in truth)
    views_agree2, placed2 = until(truth2)
    return {
        "nodes": nodes,
        "models": models,
        "replicas": replicas,
        "seed": seed,
        "hold_load_s": hold_load,
        "after_change": {"views_agree_s": _r(views_agree), "placed_s": _r(placed)},
        "after_crash": {
            "crashed": victim,
            "replicas_moved": moved,
            "views_agree_s": _r(views_agree2),
            "placed_s": _r(placed2),
        },
        "change_at_s": round(t0, 3),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
