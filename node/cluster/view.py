"""What a router knows of the cluster: the ready replicas of a model, each
member's last load report and its age, and every router's gossiped in-flight
counts. `GossipView` reads it from a gossip node's records; the simulator
offers the same `ClusterView` from its own model of the nodes.

A peer's record is data, not trusted: a field of the wrong type reads as absent
or zero, never as an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gossip.core import GossipNode
from gossip.wire import Status

from .prefix import Scheme, Summary, SummaryCache, scheme_of


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One member's gossiped load."""

    #: Requests waiting or running there when it reported.
    queue: float
    #: Its service time per request (1 / throughput); 0 when unknown.
    service_s: float
    #: When the report was applied here (core time): its age is `now - at`.
    at: float


class ClusterView(Protocol):
    def ready_replicas(self, model: str) -> list[str]:
        """Alive members where `model` is ready, sorted."""
        ...

    def report(self, name: str) -> LoadReport | None: ...

    def inflight_reports(self) -> Iterator[tuple[str, Mapping[str, Any], float]]:
        """(router, its in-flight count per destination, when applied)."""
        ...


def num(v: object) -> float:
    """A gossiped number, or 0 for anything else."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return 0.0
    return float(v) if v == v and abs(v) < 1e12 else 0.0


def model_info(rec: Any, model: str) -> dict[str, Any] | None:
    """`model`'s entry in a member's record (`models` key), or None."""
    models = rec.get("models") if rec is not None else None
    info = models.get(model) if isinstance(models, dict) else None
    return info if isinstance(info, dict) else None


class GossipView:
    """A `ClusterView` over a gossip node's members and records.

    Records hold `models` ({model: {"state": ...}}), `load` ({"queue",
    "in_flight", "throughput", ...}), `inflight` ({destination: count}) and,
    for an LLM, its prefix summary (node/cluster/prefix.py: a `prefix` header
    in the model's entry and `px:` slot keys), decoded through `summaries`
    (kept by the caller, so a slot is decoded once per change).
    """

    def __init__(self, node: GossipNode, summaries: SummaryCache | None = None) -> None:
        self.node = node
        self.summaries = summaries if summaries is not None else SummaryCache()

    def alive(self) -> list[str]:
        return sorted(n for n, m in self.node.members.items() if m.status == Status.ALIVE)

    def ready_replicas(self, model: str) -> list[str]:
        out = []
        for name in self.alive():
            info = model_info(self.node.record(name), model)
            if info is not None and info.get("state") == "ready":
                out.append(name)
        return out

    def knows_model(self, model: str) -> bool:
        return any(model_info(self.node.record(n), model) for n in self.node.members)

    def report(self, name: str) -> LoadReport | None:
        rec = self.node.record(name)
        if rec is None:
            return None
        ld = rec.get("load")
        ld = ld if isinstance(ld, dict) else {}
        throughput = num(ld.get("throughput"))
        return LoadReport(
            queue=num(ld.get("queue")) + num(ld.get("in_flight")),
            service_s=1.0 / throughput if throughput > 0 else 0.0,
            at=rec.updated_at,
        )

    def inflight_reports(self) -> Iterator[tuple[str, Mapping[str, Any], float]]:
        for name in self.node.members:
            rec = self.node.record(name)
            counts = rec.get("inflight") if rec is not None else None
            if rec is not None and isinstance(counts, dict):
                yield name, counts, rec.updated_at

    def prefix_summary(self, name: str, model: str) -> tuple[Scheme, Summary] | None:
        """`name`'s prefix summary of `model` and how its blocks are hashed, or None."""
        rec = self.node.record(name)
        entry = model_info(rec, model)
        if rec is None or entry is None:
            return None
        header, scheme = entry.get("prefix"), scheme_of(entry)
        if not isinstance(header, dict) or scheme is None:
            return None
        summary = self.summaries.summary(name, header, rec.get)
        return (scheme, summary) if summary is not None else None

    def devices(self) -> dict[str, Any]:
        """Alive members' gossiped `device` entries (for placement)."""
        out = {}
        for name in self.alive():
            rec = self.node.record(name)
            out[name] = rec.get("device") if rec is not None else None
        return out
