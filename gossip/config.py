"""Tunables of the gossip core. Defaults are Serf's lan interval and fanout;
the failure-detector thresholds were chosen by measurement in the simulator
(see docs/benchmarks.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GossipConfig:
    #: Gossip round: retransmit pending updates to `fanout` random peers.
    interval: float = 0.2
    fanout: int = 3
    #: Heartbeat to the ring successor every this many rounds (0.4 s by default):
    #: one datagram per node per period, whatever the cluster size. 0 disables
    #: heartbeats and the failure detector (for protocol experiments only).
    heartbeat_every: int = 2
    #: Silence from the ring predecessor longer than this many heartbeat periods
    #: triggers an active check (direct ping plus `indirect_probes` ping-reqs).
    silence_periods: float = 2.0
    indirect_probes: int = 3
    #: Minimum time to wait for an ack; scaled by local health (Lifeguard).
    probe_timeout: float = 0.25
    #: Suspicion timeout (Lifeguard): from `suspicion_max` with no confirmation
    #: down to `suspicion_min` with `suspicion_confirmations` independent ones,
    #: each scaled by max(1, log10(N)).
    suspicion_min: float = 0.6
    suspicion_max: float = 3.0
    suspicion_confirmations: int = 3
    #: Each update is sent retransmit_mult * ceil(log10(N + 1)) times (memberlist).
    retransmit_mult: int = 4
    #: Anti-entropy: a state-hash probe to a random peer every this many rounds
    #: (0 disables it; `anti_entropy_full` sends a whole digest window instead).
    anti_entropy_every: int = 10
    anti_entropy_full: bool = False
    #: Anti-entropy of a causal CRDT (ORSet, ORMap) whose hash differs sends
    #: its context digest, when smaller than the state, and each side answers
    #: with just what the other lacks (crdt.ContextDigest): two small deltas
    #: instead of two whole states. False: always the whole state.
    crdt_digest_sync: bool = True
    #: Forward news to `eager_fanout` peers the moment it arrives, not at the
    #: next round. Each copy is charged to the retransmit budget, so a wider
    #: eager wave costs no more in all; it leaves fewer nodes to wait for a
    #: round (simulated, N = 40: median slowest peer 51 ms -> 1.6 ms with 5
    #: instead of 3; see docs/benchmarks.md).
    eager_push: bool = True
    eager_fanout: int = 5
    #: Digest entries per SYN: the digest is a rotating window, never O(N).
    digest_window: int = 24
    #: Every this many rounds, knock on one dead or removed member (1 s; free
    #: while nobody is dead), so a healed partition finds its other half fast.
    reconnect_every: int = 5
    #: Every this many rounds, ping one random member not heard from for as long
    #: (5 s): SWIM's random probe, a backstop for members nobody's ring watches.
    random_probe_every: int = 25
    #: Dead and left members are removed after this grace; their tombstones
    #: (which stop resurrection) after `tombstone_ttl`.
    dead_grace: float = 60.0
    tombstone_ttl: float = 3600.0
    #: Deleted keys are removed after this grace.
    key_gc_grace: float = 60.0
    #: A tick this much later than scheduled means our own loop stalled.
    lag_threshold: float = 0.5
    max_local_health: int = 8
    #: Local health falls by one after this long with no new reason to raise
    #: it (a late tick, a failed probe, a refutation). Lifeguard lowers it on
    #: each successful probe; ring heartbeats make few, so without this decay
    #: one stall (a model loading at start) slowed detection for good: 2.5 s
    #: idle without a model, 6.6-12 s with one (docs/benchmarks.md). 0: off.
    local_health_decay: float = 1.0
    #: Clocks: a remote timestamp further ahead of ours than this is refused,
    #: and a node whose clock is this far from its peers' median refuses LWW
    #: writes until it is fixed (gossip/clock.py). NTP keeps hosts within
    #: milliseconds; seconds of slack avoid refusing over a slow NTP step.
    max_clock_offset: float = 5.0
    #: Inbound TCP streams: concurrent connections in all and per source
    #: address, the deadline for a stream's authenticated preamble, and for
    #: the rest of the stream.
    max_streams: int = 64
    max_streams_per_ip: int = 8
    stream_first_frame_s: float = 2.0
    stream_timeout_s: float = 30.0
    #: Wire limits.
    max_datagram: int = 1400
    max_stream_frame: int = 16 * 1024 * 1024
    max_node_state: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "interval",
            "probe_timeout",
            "suspicion_min",
            "suspicion_max",
            "max_clock_offset",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.heartbeat_every < 0 or self.anti_entropy_every < 0 or self.retransmit_mult < 0:
            raise ValueError("heartbeat_every, anti_entropy_every, retransmit_mult must be >= 0")
        if self.reconnect_every < 1 or self.random_probe_every < 1:
            raise ValueError("reconnect_every and random_probe_every must be >= 1")
        if self.fanout < 1 or self.eager_fanout < 1:
            raise ValueError("fanout and eager_fanout must be at least 1")
        if self.suspicion_max < self.suspicion_min:
            raise ValueError("suspicion_max must be >= suspicion_min")
        if not 256 <= self.max_datagram <= 65_000:
            raise ValueError("max_datagram must be within 256..65000")
