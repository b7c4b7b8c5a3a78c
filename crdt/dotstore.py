"""The dot store under ORSet and ORMap: keys mapped to dots, plus a causal context.

Design (Almeida, Shoker and Baquero 2018, "optimized add-wins set"; the
ORSWOT of riak_dt): every add is a *dot* (replica, counter) and the state is a
dot store plus a causal context, the set of every dot ever seen. Join keeps a
dot when both sides hold it, or when one side holds it and the other has never
seen it. A remove therefore needs no tombstone: it is just "seen, not held".

Each key holds at most one dot per replica: a new add by a replica also
retires every dot it observed for that key, as in ORSWOT. Almost every key
holds exactly one dot, so those live in `_single` (key -> dot) and the rest in
`_multi` (key -> {replica: counter}); a key is in at most one of them.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar, Generic, Self, TypeVar

from .base import CRDT
from .context import MAX_RUN_DOTS, CausalContext, ContextDigest, Dot

K = TypeVar("K", bound=Hashable)


class DotStore(CRDT, Generic[K]):
    """Keys mapped to dots, with an optional CRDT payload per dot, plus a context.

    `_index` maps each held dot back to its key, so a small delta joins in time
    proportional to the delta, not to the whole state.
    """

    __slots__ = ("_ctx", "_index", "_multi", "_payload", "_single")
    _HAS_PAYLOAD: ClassVar[bool] = False

    def __init__(self) -> None:
        self._ctx = CausalContext()
        self._single: dict[K, Dot] = {}
        self._multi: dict[K, dict[str, int]] = {}
        self._index: dict[Dot, K] = {}
        self._payload: dict[Dot, CRDT] = {}

    # -- the join -------------------------------------------------------------

    def merge(self, other: Self) -> None:
        self._check_same_type(other)
        octx, oindex, index = other._ctx, other._index, self._index
        # 1. Drop what the other side has seen but no longer holds (its removes),
        #    walking whichever is smaller: its context or our held dots.
        # The walks keep dict order (a C set difference would be as fast to
        # compute but hands the dots back in hash order, and the inserts that
        # follow then touch memory at random: 2-3x slower at 100,000 dots).
        if octx.dot_count() < len(index):
            doomed = [d for d in octx.iter_dots() if d in index and d not in oindex]
        else:
            doomed = octx.seen_among([d for d in index if d not in oindex])
        self._drop_many(doomed)
        # 2. Take what the other side holds and this side has never seen.
        theirs = [d for d in oindex if d not in index]
        if self._HAS_PAYLOAD:
            for d in oindex.keys() & index.keys():
                self._payload[d].merge(other._payload[d])
            for d in self._ctx.unseen_among(theirs):
                self._put(oindex[d], d, other._payload[d].copy())
        else:
            self._put_many(self._ctx.unseen_among(theirs), oindex)
        # 3. Everything either side has seen is now seen.
        self._ctx.merge(octx)

    def _drop_many(self, dots: list[Dot]) -> None:
        """`_drop` each dot; dots of single-dot keys (nearly all) take a fast path."""
        index, pop = self._index, self._single.pop
        payload = self._payload if self._HAS_PAYLOAD else None
        for d in dots:
            key = index.pop(d)  # hashing a dot costs more than hashing a key: once
            if pop(key, None) == d:
                if payload is not None:
                    del payload[d]
            else:  # a multi-dot key (the pop missed): undo and take the slow path
                index[d] = key
                self._drop(d)

    def _put_many(self, dots: list[Dot], keys: dict[Dot, K]) -> None:
        """`_put` each dot under `keys[dot]`, payload-free; new keys take a fast path."""
        single, multi, index = self._single, self._multi, self._index
        for d in dots:
            key = keys[d]
            if key in single or key in multi:
                self._put(key, d, None)
            else:
                single[key] = d
                index[d] = key

    def _drop(self, d: Dot) -> None:
        key = self._index.pop(d)
        if self._HAS_PAYLOAD:
            del self._payload[d]
        if self._single.pop(key, None) is not None:
            return
        dots = self._multi[key]
        del dots[d[0]]
        if len(dots) == 1:
            del self._multi[key]
            self._single[key] = next(iter(dots.items()))

    def _put(self, key: K, d: Dot, payload: CRDT | None) -> None:
        r, c = d
        one = self._single.get(key)
        if one is None:
            dots = self._multi.get(key)
            if dots is None:
                self._single[key] = d
            else:
                old = dots.get(r)
                if old is not None:
                    # Two live dots of one replica on one key cannot arise from valid
                    # histories; keep the newer so the store stays well-formed.
                    if old > c:
                        return
                    self._drop((r, old))
                    self._put(key, d, payload)
                    return
                dots[r] = c
        elif one[0] == r:
            if one[1] > c:
                return
            self._drop(one)
            self._single[key] = d
        else:
            del self._single[key]
            self._multi[key] = {one[0]: one[1], r: c}
        self._index[d] = key
        if payload is not None:
            self._payload[d] = payload

    # -- delta mutators ---------------------------------------------------------

    def _delta_add(self, replica: str, key: K, payload: CRDT | None) -> Self:
        """Add `key` with a fresh dot, retiring its observed dots; returns the delta.

        Applied here directly rather than through `merge`: the effect of joining
        the delta is known (drop the old dots, hold the new one, see it).
        """
        dot = self._ctx.next_dot(replica)
        delta = self._retire(key)
        delta._ctx.add(*dot)
        delta._single[key] = dot
        delta._index[dot] = key
        if payload is not None:
            delta._payload[dot] = payload.copy()
        self._put(key, dot, payload)
        self._ctx.add(*dot)
        return delta

    def _retire(self, key: K) -> Self:
        """Drop every dot of `key` here; returns a delta whose context holds them."""
        delta = type(self)._empty_like(self)
        one = self._single.get(key)
        if one is not None:
            delta._ctx.add(*one)
            self._drop(one)
        else:
            for r, c in list(self._multi.get(key, {}).items()):
                delta._ctx.add(r, c)
                self._drop((r, c))
        return delta

    @classmethod
    def _empty_like(cls, proto: Self) -> Self:
        return cls()

    # -- version-vector sync --------------------------------------------------

    def context_digest(self) -> ContextDigest:
        """What this replica has, for a peer's `delta_since`."""
        return ContextDigest(self._ctx.copy(), frozenset(self._index))

    def delta_since(self, digest: ContextDigest) -> Self:
        """The least delta that brings the digest's owner up to this state.

        Joined into the replica `a` that made `digest`, it gives exactly
        `a ⊔ self`: it holds the entries `a` has not seen, and its context is
        what `a` has not seen plus the dots `a` holds that this side has seen
        and removed. It is also a valid delta of this state (it joins into any
        replica safely), so it can be forwarded like any other delta.
        """
        actx, aheld, ctx = digest.context, digest.held, self._ctx
        seen_dots: dict[str, list[int]] = {}  # what `a` lacks, by replica
        lag_dots = 0
        for r, n in ctx.vv.items():
            m = actx.vv.get(r, 0)
            if n > m and (m or actx.cloud_of(r)):
                lag_dots += n - m
        # A replica far behind gets the full state: a cloud of millions of dots
        # would cost more than the entries (and the decoder caps run lists).
        if lag_dots > min(max(4096, 4 * len(self._index)), MAX_RUN_DOTS // 2):
            return self.copy()
        delta = type(self)._empty_like(self)
        dctx = delta._ctx
        for r, n in ctx.vv.items():
            m = actx.vv.get(r, 0)
            acloud = actx.cloud_of(r)
            if not m and not acloud:
                dctx.raise_to(r, n)  # nothing of r seen there: send the prefix
            elif n > m:
                seen_dots[r] = [c for c in range(m + 1, n + 1) if c not in acloud]
        for r in ctx.replicas():
            mine = ctx.cloud_of(r)
            if mine:
                seen = actx.contains
                seen_dots.setdefault(r, []).extend(c for c in mine if not seen((r, c)))
        # Set differences run in C; the Python passes then walk only the dots
        # that differ (held there and gone here, held here and new there).
        for r, c in ctx.seen_among(aheld.difference(self._index)):
            seen_dots.setdefault(r, []).append(c)
        for r, cs in seen_dots.items():
            dctx.add_counters(r, cs)
        index = self._index
        new = actx.unseen_among([d for d in index if d not in aheld])
        if self._HAS_PAYLOAD:
            for d in new:
                delta._put(index[d], d, self._payload[d].copy())
        else:
            delta._put_many(new, index)
        return delta

    # -- shared plumbing ------------------------------------------------------

    @property
    def context(self) -> CausalContext:
        """The causal context (read-only by convention)."""
        return self._ctx

    def _dots_of(self, key: K) -> list[Dot]:
        one = self._single.get(key)
        if one is not None:
            return [one]
        return list(self._multi.get(key, {}).items())

    def max_timestamp(self) -> int:
        return max((p.max_timestamp() for p in self._payload.values()), default=0)

    def copy(self) -> Self:
        c = type(self)._empty_like(self)
        c._ctx = self._ctx.copy()
        c._single = dict(self._single)
        c._multi = {k: dict(v) for k, v in self._multi.items()}
        c._index = dict(self._index)
        c._payload = {d: p.copy() for d, p in self._payload.items()}
        return c

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (
            self._single == other._single
            and self._multi == other._multi
            and self._ctx == other._ctx
            and self._payload == other._payload
        )

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._single) + len(self._multi)

    def __contains__(self, key: object) -> bool:
        return key in self._single or key in self._multi
