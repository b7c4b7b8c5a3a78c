"""Exceptions of the gossip package, split by who is at fault (as in h11)."""

from __future__ import annotations


class RemoteProtocolError(Exception):
    """A peer sent something malformed, unauthenticated, replayed or forged.

    Raised only inside the receive path, where it means: drop, count, move on.
    `reason` is the counter label.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class LocalProtocolError(Exception):
    """Our own caller misused the core (a bug on this side)."""


class StateTooLarge(LocalProtocolError):
    """A local write would push this node's state over `max_node_state`."""
