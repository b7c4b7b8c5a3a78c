"""Decentralized placement: every node computes the same assignment from its own
view, with no coordinator. Pure (no I/O, no clock), so the simulator
(`rumor sim placement`) runs the same code as the daemon (`placement` and
`Placer` both).

* The catalog (an ORMap of model specs) and the replica targets (an LWWMap)
  are CRDTs, gossiped like everything else.
* `assign`: each model goes to the `target` alive nodes with the highest
  weighted rendezvous score -w / ln(u), u a hash of (node, model) in (0, 1),
  w the node's capacity (device memory). Adding or losing a node moves only
  the models whose top-k it enters or leaves.
* `Placer`: hysteresis. A model is loaded only once it has been assigned here
  for `hold_load` seconds, and unloaded only once it has been unassigned for
  `hold_unload` seconds, so a flapping view (a suspicion, a partition that
  heals) causes no load/unload thrash.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


def score(node: str, model: str, weight: float) -> float:
    """Weighted rendezvous score (highest wins)."""
    h = hashlib.blake2b(f"{node}\0{model}".encode(), digest_size=8).digest()
    u = (int.from_bytes(h, "big") + 0.5) / 2**64  # in (0, 1)
    return -max(weight, 1e-9) / math.log(u)


def assign(targets: Mapping[str, int], capacity: Mapping[str, float]) -> dict[str, list[str]]:
    """model -> the nodes that should hold it, best first."""
    out = {}
    for model, k in sorted(targets.items()):
        ranked = sorted(capacity, key=lambda n: (-score(n, model, capacity[n]), n))
        out[model] = ranked[: max(0, min(k, len(ranked)))]
    return out


def replica_target(v: object) -> int:
    """A gossiped replica target: a non-negative int, else the default 1."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 1


def placement(
    catalog: Mapping[str, object],
    targets: Mapping[str, object],
    devices: Mapping[str, object],
    draining: Iterable[str] = (),
) -> dict[str, list[str]]:
    """model -> the nodes that should hold it: every catalog model at its
    replica target, over the alive nodes in `devices` (name -> gossiped device)
    less those draining. Each node computes this from its own view."""
    away = set(draining)
    capacity = {n: capacity_of(d) for n, d in devices.items() if n not in away}
    wanted = {m: replica_target(targets.get(m, 1)) for m in catalog}
    return assign(wanted, capacity)


def capacity_of(device: object) -> float:
    """A node's weight: device memory in GiB when known, else 1."""
    if isinstance(device, dict):
        total = device.get("memory_total")
        if isinstance(total, int | float) and not isinstance(total, bool) and total > 0:
            return float(total) / 2**30
    return 1.0


@dataclass
class Placer:
    hold_load: float = 2.0
    hold_unload: float = 30.0
    _wanted_since: dict[str, float] = field(default_factory=dict)
    _unwanted_since: dict[str, float] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        """A load or an unload waits out its hold: time alone will change things."""
        return bool(self._wanted_since or self._unwanted_since)

    def step(self, now: float, mine: set[str], held: set[str]) -> tuple[set[str], set[str]]:
        """`mine`: models assigned here in this view; `held`: models placed here
        and loaded or loading. Returns (to_load, to_unload)."""
        for m in list(self._wanted_since):
            if m not in mine:
                del self._wanted_since[m]
        for m in list(self._unwanted_since):
            if m in mine or m not in held:
                del self._unwanted_since[m]
        to_load, to_unload = set(), set()
        for m in mine - held:
            since = self._wanted_since.setdefault(m, now)
            if now - since >= self.hold_load:
                to_load.add(m)
        for m in held - mine:
            since = self._unwanted_since.setdefault(m, now)
            if now - since >= self.hold_unload:
                to_unload.add(m)
        return to_load, to_unload
