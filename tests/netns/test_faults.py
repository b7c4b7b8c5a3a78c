"""Real daemons in 5 network namespaces, under loss, delay, a partition and a SIGKILL.

The namespaces are joined by a userspace switch (tests/netns/switch.py) over
TAP devices: the CI kernel has no sch_netem, so the switch applies netem's
faults (20% loss, 50 ms ± 20 ms delay) and the partitions itself. Needs root;
otherwise every test here skips and says why. Every namespace is removed at
the end, also on failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gossip.crypto import Keyring
from node.localcluster import read_line
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
N = 5
GOSSIP_PORT, HTTP_PORT = 7946, 8000
TOKEN = "netns-test-token"  # admin calls from a non-loopback client need one


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun for the switch's TAP devices"
    probe = f"rumor-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


def ip(i: int) -> str:
    return f"10.77.0.{i + 1}"


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tag = os.getpid()
        self.namespaces = [f"rumor-{tag}-{i}" for i in range(N)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.switch: subprocess.Popen[str] | None = None
        self.keyring = tmp / "keyring.json"
        self.keyring.write_text(Keyring.generate().dump())
        self.client = httpx.Client(timeout=5, headers={"authorization": f"Bearer {TOKEN}"})

    def up(self) -> None:
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "add", ns], check=True)
        self.switch = subprocess.Popen(
            [sys.executable, "-m", "tests.netns.switch", *self.namespaces],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.switch.stdout is not None
        line = read_line(self.switch.stdout, 60)
        assert line.strip() == "ready", f"switch did not start: {line!r}"

    def command(self, line: str) -> None:
        assert self.switch is not None and self.switch.stdin and self.switch.stdout
        self.switch.stdin.write(line + "\n")
        self.switch.stdin.flush()
        answer = read_line(self.switch.stdout, 30)
        assert answer.startswith("ok"), f"switch: {line!r} -> {answer!r}"

    def start(self, i: int, models: list[str]) -> None:
        cmd = [
            "ip", "netns", "exec", self.namespaces[i],
            sys.executable, "-m", "node.cli", "node", "--name", f"n{i}",
            "--gossip", f"{ip(i)}:{GOSSIP_PORT}", "--http", f"{ip(i)}:{HTTP_PORT}",
            "--keyring", str(self.keyring), "--log-json", "--drain-timeout", "1",
        ]  # fmt: skip
        if i:
            cmd += ["--join", f"{ip(0)}:{GOSSIP_PORT}"]
        for m in models:
            cmd += ["--model", m]
        with open(self.log(i), "ab") as err:  # the child keeps its copy
            self.procs[i] = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "RUMOR_ADMIN_TOKEN": TOKEN},
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )

    def log(self, i: int) -> Path:
        return self.tmp / f"n{i}.log"

    def url(self, i: int) -> str:
        return f"http://{ip(i)}:{HTTP_PORT}"

    def view(self, i: int) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get(f"{self.url(i)}/v1/cluster").json()
        return result

    def statuses(self, i: int) -> dict[str, str]:
        return {m["name"]: m["status"] for m in self.view(i)["members"]}

    def live(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def deaths(self) -> list[dict[str, Any]]:
        """Every member-dead event in every daemon's own log."""
        out = []
        for i in range(N):
            if not self.log(i).exists():
                continue
            for line in self.log(i).read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == "member-dead":
                    out.append({"observer": f"n{i}", **rec})
        return out

    def down(self) -> None:
        self.client.close()
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs.values():
            p.wait(10)
        if self.switch is not None:
            self.switch.kill()
            self.switch.wait(10)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def all_alive(lab: Lab, members: list[int] | None = None) -> bool:
    want = {f"n{i}" for i in (members if members is not None else lab.live())}
    for i in lab.live():
        st = lab.statuses(i)
        if {k for k, v in st.items() if v == "alive"} != want:
            return False
    return True


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("netns"))
    try:
        lab.up()
        models = {1: ["mlp=builtin:mlp"], 2: ["mlp=builtin:mlp"]}
        for i in range(N):
            lab.start(i, models.get(i, []))
            if i == 0:
                wait_for(lambda: lab.view(0) is not None, 30, "n0's HTTP")
        wait_for(lambda: all_alive(lab, list(range(N))), 60, "5 alive members everywhere")
        yield lab
    finally:
        lab.down()


def test_no_member_stays_dead_at_20pct_loss_and_50ms_delay(lab: Lab) -> None:
    before = len(lab.deaths())
    lab.command("impair 0.2 0.05 0.02")
    try:
        t0 = time.monotonic()
        # A change made under loss still reaches everyone.
        lab.client.put(f"{lab.url(3)}/v1/node/tags", json={"phase": "lossy"}).raise_for_status()
        while time.monotonic() - t0 < 60:
            time.sleep(1)  # the 60 s under loss are the scenario, not a wait
        deaths = lab.deaths()[before:]
        # The count is a figure (docs/benchmarks.md: 0 on a quiet host; one death
        # in four runs on an overloaded one): a false verdict must not last, and
        # must stay rare. Every member is alive everywhere after the minute.
        print(f"60 s at 20% loss, 50 +- 20 ms: {len(deaths)} deaths")
        assert len(deaths) <= 1, f"false deaths at 20% loss: {deaths}"
        wait_for(lambda: all_alive(lab, list(range(N))), 30, "every member alive everywhere")

        def tag_everywhere() -> bool:
            return all(
                next(m for m in lab.view(i)["members"] if m["name"] == "n3")["tags"].get("phase")
                == "lossy"
                for i in range(N)
            )

        assert tag_everywhere()
    finally:
        lab.command("heal")


def test_partition_of_30s_converges_soon_after_heal(lab: Lab) -> None:
    lab.command("partition 0,1 2,3,4")
    cut_at = time.monotonic()
    try:
        # Each side sees the other dead, and changes its own state meanwhile.
        wait_for(
            lambda: lab.statuses(0).get("n3") == "dead" and lab.statuses(3).get("n0") == "dead",
            60,
            "each side to declare the other dead",
        )
        lab.client.put(f"{lab.url(0)}/v1/node/tags", json={"side": "a"}).raise_for_status()
        lab.client.put(f"{lab.url(4)}/v1/node/tags", json={"side": "b"}).raise_for_status()
        time.sleep(max(0.0, cut_at + 30 - time.monotonic()))  # 30 s of partition
    finally:
        lab.command("heal")

    def converged() -> bool:
        if not all_alive(lab, list(range(N))):
            return False
        for i in range(N):
            tags = {m["name"]: m["tags"] for m in lab.view(i)["members"]}
            if tags["n0"].get("side") != "a" or tags["n4"].get("side") != "b":
                return False
        return True

    took = wait_for(converged, 60, "convergence after the heal", step=0.05)
    print(f"converged {took:.2f} s after the heal")
    # 0.70 s on a quiet host and 5.38 s once on a busy one (docs/benchmarks.md):
    # the bound is for a regression (no reconnect at all), with room for load.
    assert took <= 15.0, f"converged only {took:.2f} s after the heal"


def test_sigkill_under_load_fails_no_request_another_replica_can_serve(lab: Lab) -> None:
    # mlp is ready on n1 and n2; the clients enter at n0, n3 and n4 only.
    x = {"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}
    body = {"inputs": [x]}
    wait_for(
        lambda: all(
            lab.client.get(f"{lab.url(i)}/v2/models/mlp/ready").status_code == 200
            for i in (0, 3, 4)
        ),
        60,
        "mlp ready as seen from the entry nodes",
    )
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(entry: int) -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{lab.url(entry)}/v2/models/mlp/infer", json=body)
                    results.append((r.status_code, r.headers.get("x-rumor-served-by", "")))
                except httpx.HTTPError as e:
                    results.append((0, repr(e)))

    threads = [threading.Thread(target=client, args=(e,)) for e in (0, 3, 4, 0)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        lab.procs[1].send_signal(signal.SIGKILL)
        killed_at = len(results)
        time.sleep(6)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    failed = [r for r in results if r[0] != 200]
    served = {s for _, s in results}
    after = [s for _, s in results[killed_at:]]
    print(f"{len(results)} requests, {len(after)} after the SIGKILL, {len(failed)} failed")
    assert len(results) > 50, f"too few requests ran: {len(results)}"
    assert {"n1", "n2"} <= served, f"both replicas should have served before the kill: {served}"
    assert any(s == "n2" for _, s in results[killed_at:])
    assert failed == [], f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:3]}"
