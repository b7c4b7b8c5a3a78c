"""The node's event stream (`GET /v1/events`, `rumor events`): member and model
events as this node applies them, like Serf's event handlers.

Each subscriber has a buffer of `EVENT_BUFFER` events. One that falls that
far behind is dropped, and its stream ends with an `events-lost` event so it
reconnects and re-reads `/v1/cluster` rather than silently missing events;
the number of subscribers is capped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from gossip.core import EventType, GossipEvent

from .errors import TooManySubscribers

log = logging.getLogger("rumor.node")

#: Events a subscriber may fall behind by before it is dropped.
EVENT_BUFFER = 1000
TAG_PREFIX = "tag:"

#: Gossip events as the node reports them.
KINDS = {
    EventType.JOIN: "member-join",
    EventType.UPDATE: "member-update",
    EventType.SUSPECT: "member-suspect",
    EventType.ALIVE: "member-update",
    EventType.DEAD: "member-dead",
    EventType.LEAVE: "member-leave",
    EventType.CRDT: "catalog-update",
}


class Subscription:
    """One /v1/events stream: its channel, and whether we dropped it."""

    __slots__ = ("lost", "receive", "send")

    def __init__(
        self,
        send: trio.MemorySendChannel[dict[str, Any]],
        receive: trio.MemoryReceiveChannel[dict[str, Any]],
    ) -> None:
        self.send, self.receive, self.lost = send, receive, False


class EventHub:
    def __init__(self, max_subscribers: int) -> None:
        self.max_subscribers = max_subscribers
        self.subscribers: list[Subscription] = []

    def subscribe(self) -> Subscription:
        if len(self.subscribers) >= self.max_subscribers:
            raise TooManySubscribers(
                f"{len(self.subscribers)} event streams are open "
                "(max_event_subscribers); retry later"
            )
        send, recv = trio.open_memory_channel[dict[str, Any]](EVENT_BUFFER)
        sub = Subscription(send, recv)
        self.subscribers.append(sub)
        return sub

    def emit(self, item: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            try:
                sub.send.send_nowait(item)
            except trio.WouldBlock:
                sub.lost = True  # told so when it has read what it holds
                sub.send.close()
                self.subscribers.remove(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.subscribers.remove(sub)


def event_items(ev: GossipEvent, unix_time: Callable[[float], float]) -> list[dict[str, Any]]:
    """What one gossip event looks like on the stream (none, one or two items)."""
    kind = KINDS.get(ev.type)
    if kind is None:
        return []
    item: dict[str, Any] = {"type": kind, "member": ev.member, "time": unix_time(ev.time)}
    out = []
    if ev.keys:  # every `tag:NAME` key is reported as "tags"
        item["keys"] = sorted({"tags" if k.startswith(TAG_PREFIX) else k for k in ev.keys})
        if "models" in ev.keys:
            out.append({**item, "type": "model-state"})
    # The log is the daemon's own timestamped event record (like Serf's
    # handlers); record updates are frequent under load, so only at debug.
    level = logging.DEBUG if kind in ("member-update", "catalog-update") else logging.INFO
    if log.isEnabledFor(level):
        extra = {"event": kind, "member": ev.member, "keys": list(ev.keys or ())}
        log.log(level, "%s %s", kind, ev.member, extra=extra)
    out.append(item)
    return out
