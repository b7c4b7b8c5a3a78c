"""node.cluster.placement: the same assignment from every view, little movement, no thrash."""

from __future__ import annotations

from node.cluster.placement import Placer, assign, capacity_of
from sim.placement import run_placement


def test_assignment_is_deterministic_and_moves_little_when_a_node_goes() -> None:
    nodes = {f"n{i}": 1.0 for i in range(10)}
    targets = {f"m{i}": 3 for i in range(20)}
    a = assign(targets, nodes)
    assert a == assign(targets, dict(reversed(list(nodes.items()))))  # order-free
    assert all(len(v) == 3 and len(set(v)) == 3 for v in a.values())
    gone = a["m0"][0]
    b = assign(targets, {n: w for n, w in nodes.items() if n != gone})
    for m in targets:  # only the replicas the lost node held move
        assert (set(b[m]) - set(a[m])) == set() or gone in a[m]
    assert assign({"m": 5}, {"x": 1.0})["m"] == ["x"]  # capped by the cluster size


def test_weights_follow_capacity() -> None:
    nodes = {"big": 80.0, **{f"s{i}": 8.0 for i in range(9)}}
    got = sum("big" in v for v in assign({f"m{i}": 1 for i in range(600)}, nodes).values())
    assert 250 < got < 420  # about 80/152 of 600
    assert capacity_of({"type": "cuda", "memory_total": 80 * 2**30}) == 80.0
    assert capacity_of({"type": "cpu"}) == 1.0 and capacity_of("junk") == 1.0


def test_placer_hysteresis() -> None:
    p = Placer(hold_load=2.0, hold_unload=10.0)
    assert p.step(0.0, {"m"}, set()) == (set(), set())
    assert p.step(1.0, set(), set()) == (set(), set())  # a flap resets the clock
    assert p.step(1.5, {"m"}, set()) == (set(), set())
    assert p.step(3.6, {"m"}, set()) == ({"m"}, set())
    assert p.step(4.0, set(), {"m"}) == (set(), set())
    assert p.step(9.0, {"m"}, {"m"}) == (set(), set())  # assigned again: stays
    assert p.step(10.0, set(), {"m"}) == (set(), set())
    assert p.step(20.5, set(), {"m"}) == (set(), {"m"})


def test_sim_placement_converges_after_a_change_and_a_crash() -> None:
    r = run_placement(nodes=20, models=4, replicas=2, seed=2, hold_load=1.0)
    assert r["after_change"]["placed_s"] is not None and r["after_change"]["placed_s"] < 3
    assert r["after_crash"]["placed_s"] is not None and r["after_crash"]["placed_s"] < 6
    assert r["after_crash"]["replicas_moved"] >= 1
