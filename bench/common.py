"""What the benchmark scripts share: progress lines, system tools, CPU
accounting, a daemon's gossip counters."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def say(msg: str) -> None:
    """A timestamped progress line on stderr (stdout is for results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_tool(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` with apt when missing
    (root only); otherwise exit with a clear reason."""
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit(f"{binary} is missing and this is not root: apt install {package}")
    say(f"installing {package} with apt ...")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-500:]}")
    path = shutil.which(binary)
    if not path:
        sys.exit(f"{package} installed but {binary} is not on PATH")
    return path


def cpu_seconds(pid: int) -> float:
    """CPU time a process has run, in seconds, to the nanosecond the scheduler
    keeps (/proc/PID/schedstat); 0 once it is gone. Finer than cpu_ticks'
    10 ms ticks, for short measurements."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


_GOSSIP_COUNTER = re.compile(
    r'^rumor_gossip_counter_total\{counter="([a-z0-9_]+)"\} ([0-9.e+]+)$', re.M
)


def gossip_counters(metrics_text: str) -> dict[str, float]:
    """The gossip core's counters (`rumor_gossip_counter_total{counter=...}`) from
    a daemon's /metrics text."""
    return {k: float(v) for k, v in _GOSSIP_COUNTER.findall(metrics_text)}
