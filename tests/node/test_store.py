"""The members snapshot's rule (node.store.MemberSnapshots): news is saved soon,
churn at most every `every` seconds."""

from pathlib import Path

from node.store import SNAPSHOT_MEMBERS, MemberSnapshots, NodeStore


def members(names: list[str], heard: float = 0.0) -> list[tuple[str, str, float]]:
    return [(n, f"10.0.0.{i}:7946", heard + i) for i, n in enumerate(names)]


def saved(store: NodeStore) -> set[str]:
    return {name for name, _ in store.members()}


def test_a_member_the_snapshot_lacks_is_saved_within_a_second(tmp_path: Path) -> None:
    store = NodeStore(str(tmp_path))
    snaps = MemberSnapshots(store, every=10.0, soon=1.0)
    assert not snaps.tick(0.0, [])  # nobody known yet: nothing written
    assert snaps.tick(1.0, members(["a"]))
    assert saved(store) == {"a"}
    # A second member is news: written at the next check, not 10 s on.
    assert not snaps.tick(1.5, members(["a", "b"]))  # checked under a second ago
    assert snaps.tick(2.5, members(["a", "b"]))
    assert saved(store) == {"a", "b"}


def test_losing_members_or_moving_them_waits_for_every(tmp_path: Path) -> None:
    store = NodeStore(str(tmp_path))
    snaps = MemberSnapshots(store, every=10.0, soon=1.0)
    assert snaps.tick(0.0, members(["a", "b"]))
    assert not snaps.tick(3.0, members(["a"]))
    assert saved(store) == {"a", "b"}
    assert snaps.tick(10.0, members(["a"]))
    assert saved(store) == {"a"}


def test_a_full_snapshot_that_rotates_is_written_at_most_every(tmp_path: Path) -> None:
    # In a fleet larger than the bound, the most recently heard members change
    # all the time: that is not news, or a busy node would write every second.
    store = NodeStore(str(tmp_path))
    snaps = MemberSnapshots(store, every=10.0, soon=1.0)
    fleet = [f"n{i}" for i in range(SNAPSHOT_MEMBERS * 2)]
    writes = 0
    for step in range(40):  # 20 s, checked every half second
        now = step * 0.5
        start = (step * 7) % SNAPSHOT_MEMBERS
        heard = members(fleet[start : start + SNAPSHOT_MEMBERS + 10], heard=now)
        writes += snaps.tick(now, heard)
    assert 1 <= writes <= 3, writes


def test_no_data_dir_writes_nothing() -> None:
    snaps = MemberSnapshots(NodeStore(None))
    assert not snaps.tick(0.0, members(["a"]))
