"""Exceptions of the crdt package."""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes or wire primitives from a peer are malformed, oversized or unknown.

    This is a *remote* error: the caller drops the input and counts it. Decoding
    never raises anything else and never applies partial state.
    """


class ClockDriftError(ValueError):
    """A remote HLC timestamp is further ahead of local physical time than allowed."""
