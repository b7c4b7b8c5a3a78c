"""Mutation check for crdt/: apply each mutant, run tests/crdt, revert.

    python tests/crdt/mutants.py [--all] [NAME ...]

Each mutant is one textual change to one source file (it must match exactly
once). The source is restored after each run, even on Ctrl-C. A mutant is
killed when the suite fails; the first failing test is printed, and
docs/MUTATIONS.md records the outcome. Not collected by pytest (the name does
not start with test_).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]


class Mutant(NamedTuple):
    name: str
    path: str
    old: str
    new: str
    what: str


MUTANTS = [
    Mutant(
        "lww-register-inverted",
        "crdt/registers.py",
        "        if _wins(other._e, self._e):",
        "        if not _wins(other._e, self._e):",
        "LWWRegister.merge takes the losing write (`_wins` inverted)",
    ),
    Mutant(
        "lww-older-wins",
        "crdt/registers.py",
        "    if a[1] != b[1]:\n        return a[1] > b[1]",
        "    if a[1] != b[1]:\n        return a[1] < b[1]",
        "`_wins`: the older timestamp wins",
    ),
    Mutant(
        "lww-replica-tiebreak",
        "crdt/registers.py",
        "    if a[0] != b[0]:\n        return a[0] > b[0]",
        "    if a[0] != b[0]:\n        return a[0] < b[0]",
        "`_wins`: on equal timestamps the lesser replica id wins",
    ),
    Mutant(
        "lww-write-beats-removal",
        "crdt/registers.py",
        "        return a_dead and not b_dead",
        "        return b_dead and not a_dead",
        "`_wins`: on a full tie a write beats a removal",
    ),
    Mutant(
        "lwwmap-merge-older-wins",
        "crdt/registers.py",
        "            elif e[1] > cur[1] or (e[1] == cur[1] and e is not cur and _wins(e, cur)):",
        "            elif e[1] < cur[1] or (e[1] == cur[1] and e is not cur and _wins(e, cur)):",
        "LWWMap.merge fast path: the older entry replaces the newer",
    ),
    Mutant(
        "remove-wins",
        "crdt/dotstore.py",
        "        delta = type(self)._empty_like(self)\n        one = self._single.get(key)",
        "        delta = type(self)._empty_like(self)\n"
        "        for r, n in list(self._ctx.vv.items()):\n"
        "            delta._ctx.add(r, n + 1)\n"
        "            self._ctx.add(r, n + 1)\n"
        "        one = self._single.get(key)",
        "add-wins swapped for remove-wins: a remove also retires the next dot of every "
        "replica it knows, so a concurrent add loses (ORSet and ORMap)",
    ),
    Mutant(
        "removes-never-propagate",
        "crdt/dotstore.py",
        "        self._drop_many(doomed)",
        "        self._drop_many([])",
        "DotStore.merge skips step 1 (drop what the other side has seen and removed)",
    ),
    Mutant(
        "removed-comes-back",
        "crdt/dotstore.py",
        "            self._put_many(self._ctx.unseen_among(theirs), oindex)",
        "            self._put_many(list(theirs), oindex)",
        "DotStore.merge takes the other side's dots even when this side has seen them",
    ),
    Mutant(
        "no-compaction",
        "crdt/context.py",
        "        while top + 1 in s:",
        "        while False and top + 1 in s:",
        "CausalContext._fold never folds the cloud into the vector",
    ),
    Mutant(
        "raise-walk-either-way",
        "crdt/context.py",
        "        if len(s) <= n - old:",
        "        if False:",
        "CausalContext.raise_to always walks the vector range (equivalent: cost only)",
    ),
    Mutant(
        "raise-keeps-covered-cloud",
        "crdt/context.py",
        "            s.difference_update(range(old + 1, n + 1))",
        "            pass",
        "CausalContext.raise_to keeps cloud counters the vector now covers",
    ),
    Mutant(
        "sync-forgets-removes",
        "crdt/dotstore.py",
        "        for r, c in ctx.seen_among(aheld.difference(self._index)):",
        "        for r, c in ctx.seen_among(aheld.difference(self._index) & set()):",
        "delta_since leaves out the asker's dots that the answerer removed",
    ),
    Mutant(
        "sync-sends-prefix",
        "crdt/dotstore.py",
        "            if not m and not acloud:",
        "            if True:",
        "delta_since sends a replica's whole vector even when the asker has seen part of it",
    ),
    Mutant(
        "gcounter-min",
        "crdt/counters.py",
        "            if n > mine.get(r, 0):",
        "            if n < mine.get(r, 0):",
        "GCounter.merge keeps the smaller count",
    ),
    Mutant(
        "pncounter-sign",
        "crdt/counters.py",
        "        return self._p.value - self._n.value",
        "        return self._p.value + self._n.value",
        "PNCounter.value adds the decrements",
    ),
    Mutant(
        "lwwmap-decode-ignores-dead",
        "crdt/lwwmap_wire.py",
        "            values[i] = TOMBSTONE",
        "            values[i] = None",
        "LWWMap decoding turns tombstones into writes of None",
    ),
    Mutant(
        "orset-decode-trusts-held",
        "crdt/dotstore_wire.py",
        "            if not ctx.contains((r, c)):",
        "            if False:",
        "ORSet/ORMap decoding accepts held dots missing from the context",
    ),
    Mutant(
        "hlc-not-monotonic",
        "crdt/hlc.py",
        "        self._last = max(self._last + 1, pt)",
        "        self._last = max(self._last, pt)",
        "HLC.now may repeat a timestamp",
    ),
]


def run(m: Mutant) -> str:
    path = ROOT / m.path
    original = path.read_text()
    if original.count(m.old) != 1:
        return f"NOT APPLIED (the text matches {original.count(m.old)} times)"
    try:
        path.write_text(original.replace(m.old, m.new))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", *PYTEST_ARGS, "tests/crdt"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(original)
    if proc.returncode == 0:
        return "SURVIVED"
    failed = re.findall(r"^FAILED tests/crdt/(\S+)", proc.stdout, re.MULTILINE)
    return "killed by " + (", ".join(failed) or proc.stdout.strip().splitlines()[-1])


PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "--hypothesis-seed=0"]


def main() -> int:
    """`--all` lists every failing test (slow); by default the first one (-x)."""
    args = sys.argv[1:]
    if "--all" in args:
        args.remove("--all")
    else:
        PYTEST_ARGS.append("-x")
    wanted = set(args)
    survivors = 0
    for m in MUTANTS:
        if wanted and m.name not in wanted:
            continue
        outcome = run(m)
        survivors += not outcome.startswith("killed")
        print(f"{m.name}: {outcome}", flush=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
