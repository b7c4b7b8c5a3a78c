"""The hybrid logical clock: monotonic, and remote drift is bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import HLC, ClockDriftError, hlc_pack, hlc_wall_ms

EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("now"), st.floats(0, 1e6)),
        st.tuples(st.just("recv"), st.floats(0, 1e6), st.integers(0, 1_100_000_000)),
    ),
    max_size=60,
)


@given(events=EVENTS, drift=st.floats(0.001, 100))
def test_hlc_is_monotonic_and_never_adopts_excess_drift(events: list, drift: float) -> None:
    clock = HLC(max_drift_s=drift)
    last = clock.last
    for ev in events:
        if ev[0] == "now":
            ts = clock.now(ev[1])
        else:
            _, pt, remote_ms = ev
            remote = hlc_pack(remote_ms, 7)
            ahead_ms = remote_ms - int(pt * 1000)
            if ahead_ms > clock.max_drift_ms:
                with pytest.raises(ClockDriftError):
                    clock.update(remote, pt)
                assert clock.last == last, "a rejected timestamp must not move the clock"
                continue
            ts = clock.update(remote, pt)
            assert ts > remote, "a received timestamp is always surpassed"
        assert ts > last, "strictly monotonic"
        last = ts
        assert clock.last == ts


def test_hlc_tracks_physical_time_and_counts_within_a_millisecond() -> None:
    clock = HLC()
    a = clock.now(10.0)
    b = clock.now(10.0)
    assert hlc_wall_ms(a) == hlc_wall_ms(b) == 10_000 and b == a + 1
    # Time going backwards does not move the clock backwards.
    assert clock.now(9.0) > b


def test_hlc_rejects_timestamp_beyond_max_drift() -> None:
    clock = HLC(max_drift_s=5)
    clock.update(hlc_pack(14_999), 10.0)  # 4.999 s ahead: fine
    before = clock.last
    with pytest.raises(ClockDriftError, match="ahead"):
        clock.update(hlc_pack(15_001), 10.0)
    assert clock.last == before
