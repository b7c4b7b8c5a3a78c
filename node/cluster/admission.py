"""Admission control: a node past its queue bound answers "busy" at once, so
the router tries another replica instead of queueing here; a request on its
last try is admitted anyway (up to the hard bound the batcher enforces), so
a busy cluster degrades to queueing, never to refusing everything.
"""

from __future__ import annotations


def busy_bound(busy_queue: int, max_batch: int) -> int:
    """The queue depth at which a node says busy: `busy_queue` if set, else
    twice the model's max batch (one batch running, one waiting)."""
    return busy_queue if busy_queue > 0 else 2 * max(1, max_batch)


def admits(queue: float, bound: int, final: bool) -> bool:
    return final or queue < bound
