"""Convergence after faults, on real daemons (issue #13, items 1-3): a node
whose disk was wiped or whose generation went backwards, a restart that lost
the catalog, and a clock that runs fast."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node.localcluster import LocalCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path) as c:
        yield c


def _tags_of(c: LocalCluster, observer: str, member: str) -> dict[str, str]:
    m = c.member(observer, member)
    return dict(m["tags"]) if m is not None else {}


def _set_tags(c: LocalCluster, name: str, tags: dict[str, str]) -> None:
    r = httpx.put(c.url(name, "/v1/node/tags"), json=tags, timeout=10)
    assert r.status_code == 200, r.text


def test_a_node_whose_generation_went_backwards_is_heard_again(cluster: LocalCluster) -> None:
    """The issue's reproduction, with the generation forced below the old one
    (a saved generation from when the clock ran far ahead): the new process
    must move above its old self, and its changes must arrive."""
    c = cluster
    ahead = int(time.time() * 1000) + 10**9  # ~11.6 days ahead
    a_dir = c.workdir / "a"
    a_dir.mkdir()
    (a_dir / "generation").write_text(str(ahead))
    c.start("a")
    c.kill("a")
    c.start("a")  # restarted once: generation ahead + 2
    c.start("b", join=["a"])
    c.wait_for(lambda: c.alive_members("b") == {"a", "b"}, 20, "b to see a")
    old_gen = c.member("b", "a")["generation"]
    assert old_gen == ahead + 2
    c.kill("a")
    shutil.rmtree(a_dir)  # the disk is lost: the new generation is the clock's, lower
    c.start("a", join=["b"])
    _set_tags(c, "a", {"zone": "eu-2"})
    c.wait_for(lambda: _tags_of(c, "b", "a") == {"zone": "eu-2"}, 30, "a's tag to reach b")
    m = c.member("b", "a")
    assert m["generation"] > old_gen and m["status"] == "alive"
    # ...and the move is on disk, so the next restart starts above it too.
    assert int((a_dir / "generation").read_text()) == m["generation"]


def test_a_wiped_disk_after_a_restart_still_converges(cluster: LocalCluster) -> None:
    c = cluster
    c.start("a")
    c.kill("a")
    c.start("a")
    c.start("b", join=["a"])
    c.wait_for(lambda: c.alive_members("b") == {"a", "b"}, 20, "b to see a")
    c.kill("a")
    shutil.rmtree(c.workdir / "a")
    c.start("a", join=["b"])
    _set_tags(c, "a", {"zone": "us-1"})
    c.wait_for(lambda: _tags_of(c, "b", "a") == {"zone": "us-1"}, 30, "a's tag to reach b")


def _catalog(c: LocalCluster, name: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(c.url(name, "/v1/catalog"), timeout=5).json()["catalog"]
    return body


def test_a_restart_without_state_reuses_no_dot(cluster: LocalCluster) -> None:
    """A adds m1, B sees it; A dies, B is stopped; A comes back without its
    state and adds m2; B resumes. Before: B held m1 with m2's spec, forever."""
    c = cluster
    c.start("a")
    c.start("b", join=["a"])
    c.wait_for(lambda: c.alive_members("b") == {"a", "b"}, 20, "b to see a")
    m1 = {"name": "m1", "source": "builtin:mlp", "max_batch_size": 4}
    m2 = {"name": "m2", "source": "builtin:transformer", "max_batch_size": 2}
    assert httpx.post(c.url("a", "/v1/catalog"), json=m1, timeout=10).status_code == 201
    c.wait_for(lambda: "m1" in _catalog(c, "b"), 20, "m1 to reach b")
    c.kill("a")
    c.pause("b")
    shutil.rmtree(c.workdir / "a")
    c.start("a", join=["b"])
    assert httpx.post(c.url("a", "/v1/catalog"), json=m2, timeout=10).status_code == 201
    c.resume("b")
    want = {"m1": m1, "m2": m2}
    c.wait_for(
        lambda: _catalog(c, "a") == want and _catalog(c, "b") == want, 30, "catalogs to converge"
    )


def _targets(c: LocalCluster, name: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(c.url(name, "/v1/catalog"), timeout=5).json()["replicas"]
    return body


def test_clocks_a_later_write_wins_and_a_fast_node_refuses_writes(
    cluster: LocalCluster,
) -> None:
    c = cluster
    c.start("a")
    c.start("b", join=["a"], env={"RUMOR_CLOCK_SKEW": "2"})  # fast, within the bound
    c.start("f", join=["a"], env={"RUMOR_CLOCK_SKEW": "3600"})  # an hour fast
    for n in ("a", "b", "f"):
        c.wait_for(lambda n=n: c.alive_members(n) == {"a", "b", "f"}, 20, f"{n} to see all")
    spec = {"name": "m", "source": "builtin:mlp"}
    assert httpx.post(c.url("a", "/v1/catalog"), json=spec, timeout=10).status_code == 201
    c.wait_for(lambda: "m" in _catalog(c, "b"), 20, "m to reach b")

    # The fast node knows its clock is off, says so, and refuses LWW writes.
    c.wait_for(lambda: not c.view("f")["clock"]["healthy"], 20, "f to see its clock is off")
    assert abs(c.view("f")["clock"]["offset_s"] - 3600) < 5
    assert "rumor_clock_healthy 0.0" in httpx.get(c.url("f", "/metrics"), timeout=5).text
    r = httpx.put(c.url("f", "/v1/catalog/m/replicas"), json={"replicas": 7}, timeout=10)
    assert r.status_code == 503 and "clock" in r.json()["error"]
    assert c.view("a")["clock"]["healthy"]

    # b (2 s fast) writes, then a writes half a second later by real time: a
    # has merged b's timestamp into its clock, so a's write holds everywhere.
    r = httpx.put(c.url("b", "/v1/catalog/m/replicas"), json={"replicas": 2}, timeout=10)
    assert r.status_code == 200 and r.json() == {"model": "m", "replicas": 2, "applied": True}
    c.wait_for(lambda: _targets(c, "a").get("m") == 2, 20, "b's write to reach a")
    # The scenario, not a wait: a's write comes later in real time, yet still
    # before a's own clock reaches b's timestamp (b is 2 s ahead).
    time.sleep(0.5)
    r = httpx.put(c.url("a", "/v1/catalog/m/replicas"), json={"replicas": 3}, timeout=10)
    assert r.json() == {"model": "m", "replicas": 3, "applied": True}  # what holds after it
    for n in ("a", "b"):
        c.wait_for(lambda n=n: _targets(c, n).get("m") == 3, 20, f"a's write to hold on {n}")
