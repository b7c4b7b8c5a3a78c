"""The gossip core's counters (`GossipNode.counters`): a collections.Counter
whose item assignment is a dict's own.

collections.Counter defines `__delitem__` in Python, and CPython then routes
every item assignment, `c[k] += 1` included, through a lookup of
`__setitem__` by name (typeobject.c, slot_mp_ass_subscript): 0.07 us more
per increment, and a pushed change forwarded to five peers counts a dozen
times. Naming dict's own methods here gives assignment back dict's C slot.
The one difference from a Counter: `del c[k]` of a missing key raises
KeyError, as a dict's does. Interpreted on purpose (compiled_build.py): mypyc
compiles only classes built on its own.
"""

from __future__ import annotations

from collections import Counter


class Counts(Counter[str]):
    __setitem__ = dict.__setitem__
    __delitem__ = dict.__delitem__  # type: ignore[assignment]  # str keys only here
