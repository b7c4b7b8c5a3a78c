"""rumor against HashiCorp Serf, side by side on loopback, in one run.

    sudo .venv/bin/python bench/serf_compare.py                 # N = 10, 40, 100
    .venv/bin/python bench/serf_compare.py --nodes 10 --idle 30 --json

For each N it starts N Serf agents (lan profile: 200 ms gossip, fanout 3), then
N rumor daemons (`rumor node`, 200 ms interval, fanout 3, no models, each
carrying 4 KB of tags), one system at a time so they never compete for the
CPU, and measures both in the same way:

* dissemination: one node changes a tag; each peer's own event timestamp
  (Serf: a `member-update` event handler that writes `date +%s.%N`; rumor: the
  daemon's JSON log line for the record update) minus the moment the change
  was issued.  p50 over every peer of every trial, max per trial;
* failure detection: three SIGKILLed nodes, one after another; for each, the
  time until every peer has its own `member-failed` (Serf) / `member-dead`
  (rumor) event; the median over the kills;
* false deaths: failed/dead events for any node that was not killed;
* idle traffic: a tcpdump capture on the system's gossip ports (UDP and TCP),
  IP bytes per node per second;
* CPU: utime + stime of the agent/daemon processes over the idle window, per
  node per minute.

Serf is installed with apt when it is missing (root only); without it the
script says why and exits 2.  tcpdump likewise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_ticks, ensure_tool, say  # noqa: E402
from node.localcluster import LocalCluster  # noqa: E402

HOST = "127.0.0.1"
TAG_BYTES = 4096  # state each rumor node carries (Serf caps its tags at 512 B)


def pcap_bytes(path: Path, start: float, end: float) -> tuple[int, int]:
    """IP bytes and packets in a pcap (Linux loopback: 14-byte link header)."""
    data = path.read_bytes()
    if len(data) < 24:
        return 0, 0
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    link = struct.unpack(endian + "I", data[20:24])[0]
    header = 14 if link == 1 else 16 if link == 113 else 0
    total = packets = 0
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack(endian + "IIII", data[off : off + 16])
        ts = sec + frac / (1e9 if nano else 1e6)
        if start <= ts < end:
            total += orig - header
            packets += 1
        off += 16 + incl
    return total, packets


class Capture:
    """tcpdump on loopback for a port range, written to a pcap file."""

    def __init__(self, tcpdump: str, ports: tuple[int, int], path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                tcpdump,
                "-i",
                "lo",
                "-n",
                "-s",
                "96",
                "-B",
                "16384",
                "-w",
                str(path),
                f"portrange {ports[0]}-{ports[1]}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on lo ..." once it captures
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        self.start = time.time()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=20)
        return err.strip()


# -- the two systems, behind one interface --------------------------------------------


@dataclass
class Event:
    t: float
    kind: str  # "update" | "dead" | other
    member: str
    keys: tuple[str, ...] = ()


@dataclass
class Cluster:
    n: int
    work: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=dict)
    name = "?"
    gossip_base = 0
    #: The agent holds member events back before delivering them (Serf: 1 s of quiet).
    coalesces = False

    def names(self) -> list[str]:
        return [self.node_name(i) for i in range(self.n)]

    def node_name(self, i: int) -> str:
        return f"{self.name[0]}{i}"

    def port_range(self) -> tuple[int, int]:
        return self.gossip_base, self.gossip_base + self.n - 1

    def event_file(self, node: str) -> Path:
        return self.work / f"{node}.events"

    def parse(self, line: str) -> Event | None:
        raise NotImplementedError

    def poll_events(self) -> None:
        for node in self.names():
            path = self.event_file(node)
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(node, 0))
                    chunk = f.read()
            except OSError:
                continue
            cut = chunk.rfind(b"\n") + 1
            self.offsets[node] = self.offsets.get(node, 0) + cut
            for raw in chunk[:cut].decode(errors="replace").splitlines():
                ev = self.parse(raw)
                if ev is not None:
                    self.events.setdefault(node, []).append(ev)

    def first_event(self, node: str, kind: str, member: str, after: float, key: str = "") -> float:
        for ev in self.events.get(node, []):
            if (
                ev.kind == kind
                and ev.member == member
                and ev.t >= after
                and (not key or key in ev.keys)
            ):
                return ev.t
        return -1.0

    def wait_events(
        self, kind: str, member: str, after: float, timeout: float, key: str = ""
    ) -> dict[str, float]:
        """Each other node's first `kind` event about `member` after `after`."""
        peers = [p for p in self.names() if p != member and self.alive(p)]
        end = time.time() + timeout
        got: dict[str, float] = {}
        while time.time() < end:
            self.poll_events()
            for p in peers:
                if p not in got:
                    t = self.first_event(p, kind, member, after, key)
                    if t >= 0:
                        got[p] = t
            if len(got) == len(peers):
                break
            time.sleep(0.05)
        return got

    def alive(self, node: str) -> bool:
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def pids(self) -> list[int]:
        return [p.pid for n, p in self.procs.items() if p.poll() is None]

    def kill(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGKILL)
        self.procs[node].wait(10)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs.values():
            p.wait(10)

    def false_deaths(self, killed: list[tuple[str, float]], since: float = 0.0) -> int:
        """Deaths of members that were not killed, or before they were."""
        self.poll_events()
        when = dict(killed)
        bad = 0
        for evs in self.events.values():
            for ev in evs:
                if ev.t < since or ev.kind != "dead":
                    continue
                if ev.member not in when or ev.t < when[ev.member]:
                    bad += 1
        return bad

    def suspicions(self, since: float = 0.0) -> int:
        return sum(
            ev.kind == "suspect" and ev.t >= since for evs in self.events.values() for ev in evs
        )


class SerfCluster(Cluster):
    name = "serf"
    coalesces = True
    gossip_base = 20000
    rpc_base = 21000

    def start(self, serf: str) -> None:
        handler = self.work / "handler.sh"
        handler.write_text(
            "#!/bin/sh\n"
            "t=$(date +%s.%N)\n"
            'while read -r name rest; do echo "$t $SERF_EVENT $name"; done'
            ' >> "$EVENTS_DIR/$SERF_SELF_NAME.events"\n'
        )
        handler.chmod(0o755)
        env = {**os.environ, "EVENTS_DIR": str(self.work)}
        for i, node in enumerate(self.names()):
            cmd = [
                serf, "agent", f"-node={node}", f"-bind={HOST}:{self.gossip_base + i}",
                f"-rpc-addr={HOST}:{self.rpc_base + i}", "-profile=lan", "-log-level=warn",
                f"-event-handler=member-join,member-update,member-failed={handler}",
                "-tag", "role=bench",
            ]  # fmt: skip
            if i:
                cmd += [f"-retry-join={HOST}:{self.gossip_base}", "-retry-interval=1s"]
            with open(self.work / f"{node}.log", "wb") as log:  # the child keeps its copy
                self.procs[node] = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            if i == 0:
                time.sleep(0.5)

    def members_alive(self, i: int, serf: str) -> int:
        r = subprocess.run(
            [serf, "members", f"-rpc-addr={HOST}:{self.rpc_base + i}", "-status=alive"],
            capture_output=True, text=True,
        )  # fmt: skip
        return len(r.stdout.splitlines()) if r.returncode == 0 else 0

    def wait_converged(self, serf: str, timeout: float) -> bool:
        end = time.time() + timeout
        pending = set(range(self.n))
        while pending and time.time() < end:
            pending = {i for i in pending if self.members_alive(i, serf) != self.n}
            time.sleep(0.2)
        return not pending

    def set_tag(self, i: int, value: str, serf: str) -> None:
        subprocess.run(
            [serf, "tags", f"-rpc-addr={HOST}:{self.rpc_base + i}", "-set", f"trial={value}"],
            check=True, capture_output=True,
        )  # fmt: skip

    def parse(self, line: str) -> Event | None:
        parts = line.split()
        if len(parts) != 3:
            return None
        kind = {"member-update": "update", "member-failed": "dead"}.get(parts[1], parts[1])
        return Event(float(parts[0]), kind, parts[2], ("tag:trial",))


class RumorCluster(Cluster):
    name = "rumor"
    gossip_base = 22000
    http_base = 23000

    def http(self, i: int) -> str:
        return f"http://{HOST}:{self.http_base + i}"

    def event_file(self, node: str) -> Path:
        return self.work / f"{node}.log"  # the daemon's JSON log (LocalCluster's)

    def start(
        self,
        interval: float,
        fanout: int,
        models: Iterable[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """Every daemon on its fixed ports, one boot at a time (each is ~0.4
        CPU-seconds of imports: 100 Python processes booting at once starve
        the 2 cores for a minute); through node.localcluster.LocalCluster."""
        flags = ["--interval", str(interval), "--fanout", str(fanout)]
        flags += ["--log-json", "--log-level", "debug"]
        self.local = LocalCluster(self.work, common=flags, data_dirs=False)
        for i, node in enumerate(self.names()):
            ports = ["--gossip", f"{HOST}:{self.gossip_base + i}"]
            ports += ["--http", f"{HOST}:{self.http_base + i}"]
            join = [f"{HOST}:{self.gossip_base}"] if i else []
            started = self.local.start(node, models=models, join=join, extra=ports, env=env)
            self.procs[node] = started.proc  # type: ignore[assignment]

    def stop(self) -> None:
        super().stop()
        local = getattr(self, "local", None)
        if local is not None:
            local.stop_all()  # reaps what is left and closes the pipes

    def view(self, client: httpx.Client, i: int) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = client.get(f"{self.http(i)}/v1/cluster", timeout=5).json()
            return result
        except (httpx.HTTPError, ValueError):
            return None

    def wait_converged(self, timeout: float) -> bool:
        end = time.time() + timeout
        pending = set(range(self.n))
        with httpx.Client() as client:
            while pending and time.time() < end:
                still = set()
                for i in pending:
                    v = self.view(client, i)
                    if v is None or sum(m["status"] == "alive" for m in v["members"]) != self.n:
                        still.add(i)
                pending = still
                time.sleep(0.2)
        return not pending

    def load_state(self) -> None:
        """4 KB of tags on every node (far past Serf's 512-byte cap)."""
        with httpx.Client() as client:
            for i in range(self.n):
                r = client.put(f"{self.http(i)}/v1/node/tags", json=self._tags("0"), timeout=10)
                r.raise_for_status()
                time.sleep(0.05)  # 4 KB x N of new state, spread over a few seconds

    def _tags(self, trial: str) -> dict[str, str]:
        return {"blob": "x" * TAG_BYTES, "trial": trial}

    def set_tag(self, i: int, value: str) -> None:
        r = httpx.put(f"{self.http(i)}/v1/node/tags", json=self._tags(value), timeout=10)
        r.raise_for_status()

    def parse(self, line: str) -> Event | None:
        try:
            rec = json.loads(line)
        except ValueError:
            return None
        kind = rec.get("event")
        if not kind:
            return None
        kind = {
            "member-update": "update",
            "local-update": "update",  # the origin's own log line for its change
            "member-dead": "dead",
            "member-suspect": "suspect",
        }.get(kind, kind)
        return Event(float(rec["time"]), kind, str(rec.get("member")), tuple(rec.get("keys", ())))


# -- one measurement ------------------------------------------------------------


def measure(
    cluster: Cluster,
    *,
    set_tag: Any,
    tcpdump: str,
    idle_s: float,
    trials: int,
    rng: random.Random,
    settle_s: float,
    kills: int = 3,
) -> dict[str, Any]:
    n = cluster.n
    out: dict[str, Any] = {"system": cluster.name, "nodes": n}
    say(f"{cluster.name} N={n}: waiting for {settle_s:.0f} s without a suspicion or death")
    t_settle = time.time()
    quiet_since = time.time()
    seen = -1
    while time.time() - quiet_since < settle_s and time.time() - t_settle < 300:
        cluster.poll_events()
        noisy = sum(ev.kind in ("suspect", "dead") for evs in cluster.events.values() for ev in evs)
        if noisy != seen:
            seen, quiet_since = noisy, time.time()
        time.sleep(0.5)
    out["settle_s"] = round(time.time() - t_settle, 1)
    out["startup_suspicions"] = cluster.suspicions()
    out["startup_deaths"] = cluster.false_deaths([])
    measured_from = time.time()

    # idle traffic and CPU
    say(f"{cluster.name} N={n}: idle capture {idle_s:.0f} s")
    cap = Capture(tcpdump, cluster.port_range(), cluster.work / "idle.pcap")
    pids = cluster.pids()
    ticks0 = {p: cpu_ticks(p) for p in pids}
    t_start = time.time()
    time.sleep(idle_s)
    t_end = time.time()
    ticks = sum(cpu_ticks(p) - ticks0[p] for p in pids)
    note = cap.stop()
    nbytes, packets = pcap_bytes(cap.path, t_start, t_end)
    hz = os.sysconf("SC_CLK_TCK")
    out["idle_bytes_per_node_per_s"] = round(nbytes / n / (t_end - t_start), 1)
    out["idle_packets_per_node_per_s"] = round(packets / n / (t_end - t_start), 2)
    out["cpu_s_per_node_per_min"] = round(ticks / hz / n / ((t_end - t_start) / 60), 3)
    out["tcpdump"] = note.splitlines()[-1] if note else ""

    # dissemination of one tag change
    say(f"{cluster.name} N={n}: {trials} tag changes")
    delays: list[float] = []
    maxima: list[float] = []
    spread: list[float] = []  # peers' events minus the origin's own event (Serf)
    spread_maxima: list[float] = []
    self_delay: list[float] = []
    missing = 0
    for k in range(trials):
        origin = rng.randrange(1, n)
        node = cluster.node_name(origin)
        t0 = time.time()
        set_tag(origin, f"t{k}")
        got = cluster.wait_events("update", node, t0, timeout=30, key="tag:trial")
        missing += (n - 1) - len(got)
        d = [t - t0 for t in got.values()]
        if d:
            delays += d
            maxima.append(max(d))
        own = cluster.first_event(node, "update", node, t0, "tag:trial")
        if own >= 0 and got:
            self_delay.append(own - t0)
            sp = [t - own for t in got.values()]
            spread += sp
            spread_maxima.append(max(sp))
        time.sleep(1.0)

    def r4(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    out["dissemination"] = {
        "p50_s": r4(statistics.median(delays) if delays else None),
        "max_s": r4(statistics.median(maxima) if maxima else None),
        "worst_max_s": r4(max(maxima) if maxima else None),
        "per_trial_max_s": [round(m, 4) for m in maxima],
        "missing": missing,
    }
    if self_delay:  # the agent's own event for its own change: its event-delivery delay
        out["dissemination"]["self_event_delay_s"] = r4(statistics.median(self_delay))
        out["dissemination"]["from_own_event"] = {
            "p50_s": r4(statistics.median(spread)),
            "max_s": r4(statistics.median(spread_maxima)),
            "worst_max_s": r4(max(spread_maxima)),
        }

    # failure detection: `kills` SIGKILLs, one after another (distinct victims)
    victims = [cluster.node_name(v) for v in rng.sample(range(1, n), kills)]
    lag = statistics.median(self_delay) if cluster.coalesces and self_delay else 0.0
    per_kill = []
    killed: list[tuple[str, float]] = []
    for victim in victims:
        say(f"{cluster.name} N={n}: SIGKILL {victim}")
        t0 = time.time()
        cluster.kill(victim)
        killed.append((victim, t0))
        got = cluster.wait_events("dead", victim, t0, timeout=90)
        d = sorted(t - t0 for t in got.values())
        per_kill.append(
            {
                "victim": victim,
                "p50_s": round(statistics.median(d), 3) if d else None,
                "max_s": round(d[-1], 3) if d else None,
                "missing": (n - 1 - len(killed) + 1) - len(d),
            }
        )
        time.sleep(3.0)
    maxima = [k["max_s"] for k in per_kill if k["max_s"] is not None]
    p50s = [k["p50_s"] for k in per_kill if k["p50_s"] is not None]
    out["failure_detection"] = {
        "p50_s": round(statistics.median(p50s), 3) if p50s else None,
        "max_s": round(statistics.median(maxima), 3) if maxima else None,  # median over kills
        "per_kill": per_kill,
    }
    if cluster.coalesces and maxima:  # less the event-delivery delay measured above
        out["failure_detection"]["less_event_delay"] = {
            "p50_s": round(statistics.median(p50s) - lag, 3),
            "max_s": round(statistics.median(maxima) - lag, 3),
        }
    time.sleep(2.0)
    out["false_deaths"] = cluster.false_deaths(killed, since=measured_from)
    out["suspicions"] = cluster.suspicions(since=measured_from)
    return out


def run_n(n: int, args: argparse.Namespace, serf: str, tcpdump: str) -> list[dict]:
    rng = random.Random(args.seed * 1000 + n)
    results = []
    with tempfile.TemporaryDirectory(prefix=f"serfcmp{n}-") as tmp:
        s = SerfCluster(n, Path(tmp) / "serf")
        r = RumorCluster(n, Path(tmp) / "rumor")

        def rumor_ready() -> bool:  # converged, then 4 KB of tags on every node
            if not r.wait_converged(180):
                return False
            r.load_state()
            return True

        for cluster, start, set_tag, converge, what in (
            (s, lambda: s.start(serf), lambda i, v: s.set_tag(i, v, serf),
             lambda: s.wait_converged(serf, 120), "agents"),
            (r, lambda: r.start(args.interval, args.fanout), r.set_tag,
             rumor_ready, "daemons"),
        ):  # fmt: skip
            cluster.work.mkdir()
            try:
                say(f"{cluster.name} N={n}: starting {n} {what}")
                start()
                t = time.time()
                if not converge():
                    raise RuntimeError(f"{cluster.name} N={n} did not converge")
                say(f"{cluster.name} N={n}: all alive everywhere after {time.time() - t:.1f} s")
                results.append(
                    measure(
                        cluster,
                        set_tag=set_tag,
                        tcpdump=tcpdump,
                        idle_s=args.idle,
                        trials=args.trials,
                        rng=rng,
                        settle_s=args.settle,
                    )
                )
            finally:
                cluster.stop()
    return results


def ratios(serf: dict[str, Any], rumor: dict[str, Any]) -> dict[str, Any]:
    """rumor / Serf.  Serf's agent delivers member events through a coalescer
    (about 1 s of quiet first), so the primary ratios compare protocol-level
    figures: dissemination from the origin's own event (Serf: its own
    member-update; rumor: its `local-update` log line) to each peer's event, and
    Serf's detection less its measured event-delivery delay.  End-to-end ratios
    (from the moment the change or the kill was issued) are reported too."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    sd, rd = serf["dissemination"], rumor["dissemination"]
    sf, rf = serf["failure_detection"], rumor["failure_detection"]
    s_proto = sd.get("from_own_event", sd)
    r_proto = rd.get("from_own_event", rd)
    s_detect = sf.get("less_event_delay", sf)
    return {
        "nodes": serf["nodes"],
        "dissemination_max": ratio(r_proto["max_s"], s_proto["max_s"]),
        "dissemination_worst_max": ratio(r_proto["worst_max_s"], s_proto["worst_max_s"]),
        "dissemination_p50": ratio(r_proto["p50_s"], s_proto["p50_s"]),
        "dissemination_max_end_to_end": ratio(rd["max_s"], sd["max_s"]),
        "failure_detection_max": ratio(rf["max_s"], s_detect["max_s"]),
        "failure_detection_max_end_to_end": ratio(rf["max_s"], sf["max_s"]),
        "idle_bytes": ratio(rumor["idle_bytes_per_node_per_s"], serf["idle_bytes_per_node_per_s"]),
        "cpu": ratio(rumor["cpu_s_per_node_per_min"], serf["cpu_s_per_node_per_min"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="10,40,100", help="comma-separated cluster sizes")
    ap.add_argument("--trials", type=int, default=5, help="tag changes per system and N")
    ap.add_argument("--idle", type=float, default=60.0, help="idle capture window, s")
    ap.add_argument(
        "--settle", type=float, default=10.0, help="quiet time (no suspicion) before measuring, s"
    )
    ap.add_argument("--interval", type=float, default=0.2, help="rumor gossip interval, s")
    ap.add_argument("--fanout", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in args.nodes.split(",") if x]
    except ValueError:
        ap.error("--nodes must be comma-separated integers")
    if not sizes or min(sizes) < 3 or max(sizes) > 1000:
        ap.error("--nodes: each size must be in 3..1000")
    serf = ensure_tool("serf", "serf")
    tcpdump = ensure_tool("tcpdump", "tcpdump")
    version = subprocess.run([serf, "version"], capture_output=True, text=True).stdout
    version = "serf " + version.split("\n")[0].removeprefix("Serf ")

    runs: list[dict[str, Any]] = []
    for n in sizes:
        runs += run_n(n, args, serf, tcpdump)
    by = {(r["system"], r["nodes"]): r for r in runs}
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
        "serf": version,
        "settings": {"interval_s": args.interval, "fanout": args.fanout, "tag_bytes": TAG_BYTES},
        "runs": runs,
        "ratios": [ratios(by[("serf", n)], by[("rumor", n)]) for n in sizes],
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rumor vs {report['serf']} ({report['machine']}, {report['date']})")
    for col in ("N", "system", "dissem p50", "dissem max", "detect max", "false deaths",
                "idle B/node/s", "CPU s/node/min"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in report["runs"]:
        table.add_row(
            str(r["nodes"]), r["system"], f"{r['dissemination']['p50_s']}",
            f"{r['dissemination']['max_s']}", f"{r['failure_detection']['max_s']}",
            str(r["false_deaths"]), f"{r['idle_bytes_per_node_per_s']}",
            f"{r['cpu_s_per_node_per_min']}",
        )  # fmt: skip
    Console().print(table)
    Console().print(json.dumps(report["ratios"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
