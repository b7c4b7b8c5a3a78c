"""CRDT micro-benchmark: rumor's crdt package against `crdts` or `pycrdt` from PyPI.

With `--peer pycrdt` it runs the causally ordered workloads of
bench/crdt_pycrdt.py instead (build, in-memory merge, wire merge, delta sync,
bytes, delta joins) against pycrdt (Yrs, the Rust Yjs); see that module.
The rest of this docstring is about the default peer, `crdts`.

For states of 10, 1,000 and 100,000 elements it measures, in one run and on the
same operation sequence for both libraries:
  - ops/s:    building the state one mutator call at a time;
  - merges/s: joining one replica's full state into another that overlaps it by
              half (for `crdts`, whose sync is op-based, replaying `history()`);
  - bytes:    the encoded size of the state (ours: crdt.encode, theirs: .pack()).

Semantic matches: GCounter ~ crdts.CounterSet with increases only (one counter
per replica id), PNCounter ~ CounterSet with increases and decreases, ORSet ~
crdts.ORSet (elements observed by one replica, the second replica overlapping).

    python bench/crdt_bench.py [--sizes 10,1000,100000] [--json] [--markdown]
    python bench/crdt_bench.py --peer pycrdt [--sizes 1000,10000,100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, __import__("os").path.dirname(__file__) + "/..")

import crdts

from crdt import GCounter, ORSet, PNCounter, encode


def best_time(fn: Callable[[], Any], setup: Callable[[], Any], budget_s: float = 0.5) -> float:
    """Best wall time of fn(setup()) over repeats within a time budget (at least 3 runs)."""
    best = float("inf")
    spent = 0.0
    runs = 0
    while runs < 3 or spent < budget_s:
        arg = setup()
        gc.disable()
        t0 = time.perf_counter()
        fn(arg)
        dt = time.perf_counter() - t0
        gc.enable()
        best = min(best, dt)
        spent += dt
        runs += 1
        if dt > budget_s:  # one slow run is measurement enough
            break
    return best


# -- the operation sequences -------------------------------------------------------
# Replica A touches ids [0, n); replica B touches [n/2, 3n/2): they overlap by half.


def ids(n: int, offset: int) -> list[str]:
    return [f"id{i}" for i in range(offset, offset + n)]


def ours_gcounter(n: int, offset: int, rep: str) -> GCounter:
    c = GCounter()
    for r in ids(n, offset):
        c.increment(r, 3 if rep == "A" else 5)
    return c


def peer_gcounter(n: int, offset: int, rep: str, uuid: bytes) -> Any:
    c = crdts.CounterSet(uuid=uuid)
    for r in ids(n, offset):
        c.increase(r, 3 if rep == "A" else 5)
    return c


def ours_pncounter(n: int, offset: int, rep: str) -> PNCounter:
    c = PNCounter()
    for i, r in enumerate(ids(n, offset)):
        if i % 2:
            c.decrement(r, 2)
        else:
            c.increment(r, 3 if rep == "A" else 5)
    return c


def peer_pncounter(n: int, offset: int, rep: str, uuid: bytes) -> Any:
    c = crdts.CounterSet(uuid=uuid)
    for i, r in enumerate(ids(n, offset)):
        if i % 2:
            c.decrease(r, 2)
        else:
            c.increase(r, 3 if rep == "A" else 5)
    return c


def ours_orset(n: int, offset: int, rep: str) -> ORSet:
    s = ORSet()
    for e in ids(n, offset):
        s.add(rep, e)
    return s


def peer_orset(n: int, offset: int, rep: str, uuid: bytes) -> Any:
    s = crdts.ORSet(clock=crdts.ScalarClock(uuid=uuid))
    for e in ids(n, offset):
        s.observe(e)
    return s


def peer_merge(dst: Any, src: Any) -> None:
    for update in src.history():
        dst.update(update)


CASES = {
    "GCounter": (ours_gcounter, peer_gcounter),
    "PNCounter": (ours_pncounter, peer_pncounter),
    "ORSet": (ours_orset, peer_orset),
}


def measure(kind: str, n: int) -> dict[str, Any]:
    ours_build, peer_build = CASES[kind]
    uuid = b"rumor-bench-uuid"
    budget = 0.5 if n <= 1000 else 0.1

    t_ours_ops = best_time(lambda _: ours_build(n, 0, "A"), lambda: None, budget)
    t_peer_ops = best_time(lambda _: peer_build(n, 0, "A", uuid), lambda: None, budget)

    oa, ob = ours_build(n, 0, "A"), ours_build(n, n // 2, "B")
    pa, pb = peer_build(n, 0, "A", uuid), peer_build(n, n // 2, "B", uuid)

    t_ours_merge = best_time(lambda dst: dst.merge(ob), oa.copy, budget)
    t_peer_merge = best_time(
        lambda dst: peer_merge(dst, pb), lambda: peer_build(n, 0, "A", uuid), budget
    )
    # Both libraries must agree on the merged value, or the comparison means nothing.
    merged_o = oa.copy()
    merged_o.merge(ob)
    merged_p = peer_build(n, 0, "A", uuid)
    peer_merge(merged_p, pb)
    peer_value = merged_p.read()
    ours_value = merged_o.value
    if kind == "ORSet":
        assert ours_value == frozenset(peer_value), "value mismatch"
    else:
        assert ours_value == peer_value, f"value mismatch {ours_value} != {peer_value}"

    ours_bytes = len(encode(oa))
    peer_bytes = len(pa.pack())
    return {
        "type": kind,
        "n": n,
        "ours_ops_per_s": n / t_ours_ops,
        "peer_ops_per_s": n / t_peer_ops,
        "ours_merges_per_s": 1 / t_ours_merge,
        "peer_merges_per_s": 1 / t_peer_merge,
        "merge_ratio": t_peer_merge / t_ours_merge,
        "ours_bytes": ours_bytes,
        "peer_bytes": peer_bytes,
        "bytes_ratio": ours_bytes / peer_bytes,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| type | n | ops/s ours | ops/s crdts | merges/s ours | merges/s crdts "
        "| merge speed-up | bytes ours | bytes crdts | bytes ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['type']} | {r['n']:,} | {r['ours_ops_per_s']:,.0f} | {r['peer_ops_per_s']:,.0f}"
            f" | {r['ours_merges_per_s']:,.1f} | {r['peer_merges_per_s']:,.1f}"
            f" | {r['merge_ratio']:.1f}× | {r['ours_bytes']:,} | {r['peer_bytes']:,}"
            f" | {r['bytes_ratio']:.2f}× |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peer", choices=["crdts", "pycrdt"], default="crdts")
    ap.add_argument("--sizes", default=None, help="default 10,1000,100000 (pycrdt: 1000,...)")
    ap.add_argument("--repeats", type=int, default=5, help="pycrdt: runs per median")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    if args.peer == "pycrdt":
        return main_pycrdt(args)
    sizes = [int(s) for s in (args.sizes or "10,1000,100000").split(",")]

    from rich.progress import Progress

    rows = []
    with Progress(transient=True, disable=args.json) as progress:
        task = progress.add_task("benchmarking", total=len(sizes) * len(CASES))
        for n in sizes:
            for kind in CASES:
                progress.update(task, description=f"{kind} n={n:,}")
                rows.append(measure(kind, n))
                progress.advance(task)

    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "crdts": "0.0.4",
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=1))
        return 0
    print(markdown(rows))
    ok_merge = all(r["merge_ratio"] >= 10 for r in rows)
    ok_bytes = all(r["bytes_ratio"] <= 0.5 for r in rows)
    print(
        f"\ntargets: merge speed-up >= 10x everywhere: {ok_merge}; "
        f"bytes <= 0.5x everywhere: {ok_bytes}"
    )
    return 0


def main_pycrdt(args: argparse.Namespace) -> int:
    import crdt_pycrdt as vs

    sizes = [int(s) for s in (args.sizes or "1000,10000,100000").split(",")]
    rows = []
    for n in sizes:
        for kind in ("LWWMap", "ORSet"):
            # Fewer repeats at 100,000: each run is a second or more of building.
            repeats = args.repeats if n < 100_000 else max(3, args.repeats // 2)
            rows.append(vs.measure(kind, n, repeats))
            print(f"measured {kind} n={n:,}", file=sys.stderr)
    joins = [vs.delta_join(10_000, 5_000, args.repeats)]
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "peer": vs.peer_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows, "joins": joins}, indent=1))
        return 0
    print(f"{meta}\n")
    print(vs.markdown(rows, joins))
    print("\ntargets:\n  " + "\n  ".join(vs.targets(rows, joins)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
