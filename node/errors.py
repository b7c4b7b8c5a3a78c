"""The node's own errors, split by who is at fault (as in h11 and gossip.errors)."""

from __future__ import annotations


class NodeError(Exception):
    """Base of the daemon's errors."""


class ClockUnhealthy(NodeError):
    """This node's clock is beyond the bound from its peers': LWW writes refused."""


class NotSaved(NodeError):
    """An operator write could not be saved to the data dir: nothing was applied."""


class TooManySubscribers(NodeError):
    """The cap on /v1/events subscribers is reached."""
