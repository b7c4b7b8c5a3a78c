"""This node's gossiped record: `http`, `models`, `load`, `device`, `inflight`
(this router's per-destination in-flight counts), the `px:` slot keys of its
LLMs' prefix summaries (node/cluster/prefix.py) and one `tag:NAME` key per
user tag. Keys are rewritten only when their value changes, at most once per
gossip interval (the daemon's publish loop), so an idle node sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gossip.core import GossipNode
from gossip.errors import StateTooLarge

from .events import TAG_PREFIX
from .store import NodeStore

log = logging.getLogger("rumor.node")

#: Memory figures are published in steps of this, so that free-memory noise
#: does not rewrite the record (and so re-gossip it) on every tick.
MEMORY_STEP = 256 << 20


def coarse(n: int, step: int = MEMORY_STEP) -> int:
    return (n // step) * step


class Record:
    def __init__(
        self, node: Callable[[], GossipNode], kick: Callable[[], None], store: NodeStore
    ) -> None:
        self._node, self._kick, self.store = node, kick, store
        self._published: dict[str, Any] = {}

    def publish(self, values: dict[str, Any], now: float) -> bool:
        """Write the keys whose value changed, as one change (one push), and
        delete the keys published before and absent now (a model's prefix
        summary after it is unloaded); True if anything changed."""
        node = self._node()
        changed = {k: v for k, v in values.items() if self._published.get(k) != v}
        gone = sorted(k for k in self._published if k not in values)
        if changed:
            node.set_keys(changed, now)
            self._published.update(changed)
        for key in gone:
            node.delete_key(key, now)
            del self._published[key]
        if changed or gone:
            self._kick()
        return bool(changed or gone)

    # -- user tags -------------------------------------------------------------

    def tags(self, name: str | None = None) -> dict[str, str]:
        node = self._node()
        rec = node.record(name or node.name)
        if rec is None:
            return {}
        return {k[len(TAG_PREFIX) :]: v for k, v in rec.items().items() if k.startswith(TAG_PREFIX)}

    def set_tags(self, tags: dict[str, str], now: float) -> None:
        """Replace this node's user tags, all or nothing.

        Each tag is its own record key (`tag:NAME`), so changing one tag sends
        only that tag, however much else the node carries. Bounded by the
        node-state limit: past it, nothing changes and ValueError says why.
        """
        node = self._node()
        old = self.tags()
        try:
            for k, v in sorted(tags.items()):
                if old.get(k) != v:
                    node.set_key(TAG_PREFIX + k, v, now)
        except StateTooLarge as e:
            for k in sorted(tags):  # put the old tags back
                if k in old:
                    node.set_key(TAG_PREFIX + k, old[k], now)
                else:
                    node.delete_key(TAG_PREFIX + k, now)
            raise ValueError(str(e)) from None
        for k in sorted(set(old) - set(tags)):
            node.delete_key(TAG_PREFIX + k, now)
        changed = sorted(k for k in set(tags) | set(old) if tags.get(k) != old.get(k))
        extra = {
            "event": "local-update",
            "member": node.name,
            "keys": [TAG_PREFIX + k for k in changed],
        }
        log.info("tags set", extra=extra)
        self._kick()
        self.store.save_tags(tags)  # operator data: survives a restart

    def restore_tags(self, now: float) -> None:
        tags = self.store.tags()
        if tags is not None:
            self.set_tags(tags, now)
