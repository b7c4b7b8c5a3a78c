"""GossipNode.counters counts as a collections.Counter does (gossip/counts.py)."""

from __future__ import annotations

from collections import Counter

from gossip.counts import Counts


def test_counts_read_missing_as_zero_and_add_like_a_counter() -> None:
    c, ref = Counts(), Counter[str]()
    for key in ["a", "b", "a", "c", "a"]:
        c[key] += 1
        ref[key] += 1
    c["b"] += 10
    ref["b"] += 10
    assert c == ref and c["never"] == 0 and "never" not in c
    assert isinstance(c, Counter) and c.most_common(1) == [("b", 11)]
    del c["a"]
    assert c == Counter({"b": 11, "c": 1})
